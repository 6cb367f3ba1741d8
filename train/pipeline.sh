#!/usr/bin/env bash
# The whole recipe, stage after stage: tokenizer, base model, gist tokens, retention gates,
# export, evaluation, the KV-budget figures (bench/quality.py; with MIX, recall and reasoning
# under budgets too: bench/memory.py, bench/reasoning.py) and the model card. Every
# stage resumes from its checkpoint, so running this again after an interruption carries
# on where it stopped (a stage that wrote its result.json is done and skipped). Stage budgets are minutes
# of training and, optionally, absolute end times (HH:MM UTC):
#
#   BASE_MIN=110 BASE_END=22:38 GIST_END=22:58 GATES_END=23:08 train/pipeline.sh
#
# The model that remembers (train/README.md, "The memory run") adds the generated documents
# of train/synth.py to every stage, a context of 2048 and a start from the committed model:
#
#   RUNS=train/runs/mem MODELS=train/runs/mem/models INIT_GGUF=models/gistd-6m.gguf \
#   CTX=2048 MIX=0.5 CHAT=chatml BASE_MIN=480 BASE_LR=1e-3 train/pipeline.sh
#
# Long stages run under `nice -n 10`. Outputs: train/runs/ (checkpoints, logs, figures),
# models/$NAME.gguf and models/README.md.
set -euo pipefail
# Bash reads a script as it runs it: the braces make it read all of this one first, so the
# file can be edited while a long stage runs.
{
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
RUNS=${RUNS:-train/runs}
MODELS=${MODELS:-models}
CORPUS=${CORPUS:-../shared/corpus}
NAME=${NAME:-gistd-6m}
TOK=train/runs/tok4096.model
RUN="nice -n ${NICE:-10} $PY"
CTX=${CTX:-1024}
MIX=${MIX:-0}
# torch threads: 2 on an idle machine; on a machine others load, 1 runs 3-4 times faster
# (two OpenMP threads wait on each other whenever one is descheduled)
THREADS=${THREADS:-2}
# BF16=1: the base stages' matrix products in bfloat16 (train_base.py --bf16; 1.4 times the
# tokens per second on this machine's AVX512-BF16 cores, the same losses: train/README.md)
mkdir -p $RUNS/base $MODELS

[ -f $TOK ] || $RUN train/tokenizer.py --corpus "$CORPUS" --out train/runs/tok4096 --vocab 4096

# probes scored at each evaluation when the mix is on (mix.probe_accuracy)
PROBES=""
[ "$MIX" != 0 ] && PROBES="--eval-probes 6"
# One run of train_base.py into $RUNS/$1, skipped once it wrote its result.json: context $2,
# windows of $3 tokens, $4 minutes of training, ending by $5 (HH:MM UTC, or empty); the rest
# are further arguments.
base_stage() {
    local out=$RUNS/$1 ctx=$2 seq=$3 minutes=$4 end=$5
    shift 5
    mkdir -p $out
    [ -f $out/result.json ] || \
    $RUN train/train_base.py --corpus "$CORPUS" --tok $TOK --out $out --ctx $ctx --mix $MIX \
        $PROBES ${SUP:-} --dim 256 --layers 6 --heads 8 --kv-heads 4 --seq $seq \
        --batch $((2048 / seq)) --lr "${BASE_LR:-2e-3}" --minutes "$minutes" ${BF16:+--bf16} \
        ${end:+--end-utc $end} ${ANSWER_LOSS:+--answer-loss $ANSWER_LOSS} ${OPEN:+--open $OPEN} \
        --eval-windows 8 --eval-minutes 30 --threads $THREADS "$@" \
        >> $out/log.txt 2>&1
}
# An optional first stage at a short context (SHORT_CTX, SHORT_MIN minutes), from when
# attention at 2048 tokens cost 8 times as much per token as at 512 on these cores; since
# model.attention scores a chunk of queries at a time, 2048-token windows train at about
# the speed 1024-token ones do (train/README.md, "The sixth sitting").
INIT="${INIT_GGUF:+--init-gguf $INIT_GGUF}${INIT_CKPT:+--init-ckpt $INIT_CKPT}"
# An optional stage that teaches copying from the context before the mix (train/README.md,
# "Copying, taught"): INDUCTION_STEPS steps of repeated random spans from INIT_CKPT (or
# INIT_GGUF), a previous-token head and an induction head shown where to look, then as many
# again with a loss on what the induction head carries to the logits; the stages after start
# from it.
if [ -n "${INDUCTION_STEPS:-}" ]; then
    mkdir -p $RUNS/induction
    induction() { # $1: output; the rest: further arguments
        local out=$1
        shift
        [ -f $out ] && return
        $RUN train/induction.py --tok $TOK --corpus "$CORPUS" --lr 1e-3 --copy-frac 0.75 \
            --steps $INDUCTION_STEPS --every 25 --threads $THREADS --attn-sup 1 \
            --out $out.tmp "$@" >> $RUNS/induction/log.txt 2>&1
        mv $out.tmp $out
    }
    induction $RUNS/induction/attention.pt \
        --init ${INIT_CKPT:-${INIT_GGUF:?INDUCTION_STEPS needs INIT_CKPT or INIT_GGUF}}
    induction $RUNS/induction/ckpt.pt --init $RUNS/induction/attention.pt --warmup 5 \
        --ov-sup 1 --ov-lr 1e-2
    INIT="--init-ckpt $RUNS/induction/ckpt.pt"
fi
if [ -n "${SHORT_CTX:-}" ]; then
    base_stage short $SHORT_CTX $SHORT_CTX "${SHORT_MIN:-60}" "${SHORT_END:-}" $INIT \
        ${SHORT_KINDS:+--kinds $SHORT_KINDS}
    INIT="--init-ckpt $RUNS/short/ckpt.pt --warmup 10"
fi
# CARRY: stages between the short stage and the base stage, "WINDOW:MINUTES:LR ...", each
# from the one before at a context of its window, with CARRY_SUP (default SUP) and
# CARRY_KINDS (default SHORT_KINDS): the windows lengthened a step at a time, at a learning
# rate that starts near where the stage before ended (train/README.md, "The fifth sitting")
n_carry=0
for c in ${CARRY:-}; do
    IFS=: read -r seq minutes lr <<< "$c"
    n_carry=$((n_carry + 1))
    kinds=${CARRY_KINDS:-${SHORT_KINDS:-}}
    SUP="${CARRY_SUP:-${SUP:-}}" base_stage carry$n_carry-$seq $seq $seq "$minutes" "" $INIT \
        --lr "$lr" ${kinds:+--kinds $kinds}
    INIT="--init-ckpt $RUNS/carry$n_carry-$seq/ckpt.pt --warmup 10"
done
# SUP: train_base.py's arguments that keep the copying circuit of the induction stage, e.g.
# "--attn-sup 0.5 --ov-sup 0.5" (without them the mix undid it in 80 steps: train/README.md)
# BASE_SEQ: the base stage's windows when shorter than the context; BASE_KINDS: the
# generated documents' shares (mix.parse_kinds), e.g. more retrieval than synth.WEIGHTS;
# ANSWER_LOSS: the weight of a second loss on the documents' answer tokens alone (every
# base stage: train_base.py --answer-loss); OPEN: the share of training's values drawn from
# outside evaluation's lists (every base stage: train_base.py --open; synth.OPEN otherwise)
base_stage base $CTX ${BASE_SEQ:-$CTX} "${BASE_MIN:-110}" "${BASE_END:-}" $INIT \
    ${BASE_KINDS:+--kinds $BASE_KINDS}

# train_gist.py into $RUNS/$1, from the base: $2 minutes of phase 2 after $3 of phase 1,
# ending by $4 (HH:MM UTC, or empty); the rest are further arguments. Skipped once done.
# GIST_LR: phase 2's peak rate (3e-4). GIST_KINDS and GIST_OPEN: the mix's --kinds and
# --open for these stages (the base stage's BASE_KINDS and OPEN are not passed on by
# themselves; without them synth.WEIGHTS and 0.5).
gist_stage() {
    local out=$RUNS/$1 minutes=$2 frozen=$3 end=$4
    shift 4
    mkdir -p $out
    [ -f $out/result.json ] || \
    $RUN train/train_gist.py --corpus "$CORPUS" --tok $TOK --base $RUNS/base/ckpt.pt \
        --out $out --gists 2 --seq ${GIST_SEQ:-$CTX} --batch $((2048 / ${GIST_SEQ:-$CTX})) \
        --mix $MIX ${GIST_KINDS:+--kinds $GIST_KINDS} ${GIST_OPEN:+--open $GIST_OPEN} \
        --frozen-minutes "$frozen" --frozen-lr 1e-2 --minutes "$minutes" \
        ${end:+--end-utc $end} --lr ${GIST_LR:-3e-4} --warmup 10 --plain-frac 0.25 --eval-windows 8 \
        --eval-minutes 30 --threads $THREADS "$@" >> $out/log.txt 2>&1
}
# train_gates.py into $RUNS/$1 on the checkpoint $RUNS/$2/ckpt.pt, ending by $3 (or empty),
# on windows of GATES_SEQ tokens (default GIST_SEQ). At 2,048 tokens the stage trains 17 to
# 50 times fewer tokens a minute than at 512 (train/README.md, "The eighth sitting" and
# "Gists trained at the full context", which also says what each gave).
gates_stage() {
    local out=$RUNS/$1 model=$RUNS/$2/ckpt.pt end=$3
    mkdir -p $out
    [ -f $out/result.json ] || \
    $RUN train/train_gates.py --corpus "$CORPUS" --tok $TOK --model $model --out $out \
        --hidden 32 --budget 128 --lam 0.01 --init-bias 5 --seq ${GATES_SEQ:-${GIST_SEQ:-$CTX}} --batch 1 \
        --mix $MIX --lr 2e-2 --warmup 5 --minutes "${GATES_MIN:-8}" ${end:+--end-utc $end} \
        --eval-windows 4 --eval-minutes 30 --log-every 5 --threads $THREADS \
        >> $out/log.txt 2>&1
}

# THOUGHT_MIN: a second model for reasoning pipelines, $NAME-thought.gguf: the base with
# gist tokens after each thought instead of each sentence (train_gist.py --unit thought),
# a share THOUGHT_PROBLEMS of its batches reasoning problems as a pipeline runs them (the
# question pinned, finished thoughts seen through their gists), its own gates, and
# bench/reasoning.py on it. It runs before the sentence gists, so its figures come first.
if [ -n "${THOUGHT_MIN:-}" ]; then
    gist_stage thought "$THOUGHT_MIN" 2 "" --unit thought \
        --problems "${THOUGHT_PROBLEMS:-0.6}" ${BF16:+--bf16}
    gates_stage thought-gates thought ""
    $PY train/export.py --ckpt $RUNS/thought-gates/ckpt.pt --tok $TOK \
        --out $MODELS/$NAME-thought.gguf --type f16 --name $NAME-thought \
        --chat-template "${CHAT:-none}"
    make -s -j2 build/bin/gist-model build/bin/gistd
    [ -f $RUNS/reasoning-thought/reasoning.md ] || \
    $PY bench/reasoning.py --model $MODELS/$NAME-thought.gguf --out $RUNS/reasoning-thought \
        ${THOUGHT_REASONING_ARGS:-${REASONING_ARGS:---probes 10 --gistd}}
fi

gist_stage gist "${GIST_MIN:-12}" "${GIST_FROZEN_MIN:-5}" "${GIST_END:-}"
gates_stage gates gist "${GATES_END:-}"

$PY train/export.py --ckpt $RUNS/gates/ckpt.pt --tok $TOK --out $MODELS/$NAME.gguf \
    --type f16 --name $NAME --chat-template "${CHAT:-none}"
$RUN train/evaluate.py --corpus "$CORPUS" --tok $TOK --base $RUNS/base/ckpt.pt \
    --final $RUNS/gates/ckpt.pt --windows "${EVAL_WINDOWS:-24}" --out $RUNS/eval.json \
    --gguf $MODELS/$NAME.gguf
# what the model's budgets cost: every policy at 100/50/25/12.5% of the full cache
make -s -j2 build/bin/gist-model
$PY bench/quality.py --models $MODELS/$NAME.gguf --out $RUNS/quality
# what it recalls under each budget: pass keys, needles, chat facts (bench/memory.py)
MEMORY=""
REASONING=""
if [ "$MIX" != 0 ]; then
    # 4 probes per task at depths up to 2 contexts: about an hour on idle cores (every
    # depth to 8 contexts takes hours: bench/memory.sh --model ... alone)
    $PY bench/memory.py --model $MODELS/$NAME.gguf --out $RUNS/memory \
        ${MEMORY_ARGS:---probes 4 --depths 0.5,1,2}
    MEMORY=1
    # the same model reasoning while each finished thought is compressed: held-out 2-8 step
    # problems, every policy at 50/25/12.5% of the trace, through gistd too
    make -s -j2 build/bin/gistd
    $PY bench/reasoning.py --model $MODELS/$NAME.gguf --out $RUNS/reasoning \
        ${REASONING_ARGS:---probes 10 --gistd}
    REASONING=1
fi
# the command as it was run, for the card
CMD=""
for v in RUNS MODELS INIT_GGUF INIT_CKPT INDUCTION_STEPS BF16 SUP ANSWER_LOSS OPEN SHORT_CTX SHORT_KINDS SHORT_MIN SHORT_END CARRY CARRY_SUP CARRY_KINDS GIST_SEQ BASE_SEQ BASE_KINDS CTX MIX CHAT THREADS BASE_MIN BASE_LR BASE_END GIST_MIN GIST_FROZEN_MIN \
         GIST_END GIST_LR GIST_KINDS GIST_OPEN GATES_SEQ GATES_MIN GATES_END THOUGHT_MIN THOUGHT_PROBLEMS EVAL_WINDOWS MEMORY_ARGS \
         REASONING_ARGS THOUGHT_REASONING_ARGS; do
    [ -n "${!v:-}" ] && CMD="$CMD$v=${!v} "
done
$PY train/make_card.py --runs $RUNS --model $MODELS/$NAME.gguf --out $MODELS/README.md \
    --command "${CMD}train/pipeline.sh" --quality $RUNS/quality/quality.csv \
    --gist-lr "${GIST_LR:-3e-4}" \
    ${MEMORY:+--memory $RUNS/memory/memory.md} \
    ${REASONING:+--reasoning $RUNS/reasoning/reasoning.md} \
    ${THOUGHT_MIN:+--thought-model $MODELS/$NAME-thought.gguf} \
    ${THOUGHT_MIN:+--thought-reasoning $RUNS/reasoning-thought/reasoning.md}
exit
}
