#!/usr/bin/env bash
# runs/mem28's base carried on with more of its documents on chats (issue 13: the chats sit on
# their mark with the full cache)
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
R=train/runs/mem30
nice -n 10 /usr/bin/python3 train/train_base.py --corpus ../shared/corpus --tok train/runs/tok4096.model \
  --out $R/base --ctx 2048 --mix 0.6 --eval-probes 6 --attn-sup 0.5 --ov-sup 0.5 --sup-rec 3:0,4:0 \
  --ov-self 0.5 --dim 256 --layers 6 --heads 8 --kv-heads 4 --seq 2048 --batch 1 --lr 1e-4 \
  --minutes 38 --bf16 --answer-loss 1 --eval-windows 8 --eval-minutes 30 --threads 2 \
  --init-ckpt train/runs/mem28/base/ckpt.pt --open 0.8 \
  --kinds copy=0.03,passkey=0.02,niah_single=0.06,niah_multikey=0.34,kv_recall=0.04,niah_multivalue=0.04,repeat=0.03,chat=0.36,instruct=0.03,reasoning=0.03,arith=0.02 \
  >> $R/base/log.txt 2>&1
/usr/bin/python3 train/export.py --ckpt $R/base/ckpt.pt --tok train/runs/tok4096.model --out $R/base.gguf \
  --type f16 --chat-template chatml --ctx 2048 >> $R/export.log 2>&1
echo done >> $R/export.log
