#!/usr/bin/env bash
# Rebuilds the training corpus (../shared/corpus/*.txt) from Debian 12 packages.
#
#   train/rebuild_corpus.sh OUT_DIR
#
# Downloads the packages with `apt-get download` (no installation, no root needed),
# unpacks them with dpkg-deb into a scratch folder and writes one UTF-8 .txt per work:
#   emma mansfieldpark persuasion prideprejudice sensesensibility  r-cran-janeaustenr
#   mobydick                                                       r-cran-tokenizers
#   kjv                              bible-kjv-text + bible-kjv (its `bible` program)
#   sherlock_holmes_pg1661, tom_sawyer     golang-github-pierrec-lz4-dev (testdata/)
#   jargon                                                         jargon-text
#   dasher_english_GB                                              dasher-data
# The R data sets are read with Rscript (Debian's r-base-core must be installed).
# The shared copy's README credits tom_sawyer to golang-github-golang-snappy-dev, but that
# package holds only a 14 KB excerpt; the full text (byte for byte the shared file) is in
# lz4's testdata, which is used here.
set -euo pipefail
out=${1:?usage: rebuild_corpus.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

pkgs="r-cran-janeaustenr r-cran-tokenizers bible-kjv-text bible-kjv
      golang-github-pierrec-lz4-dev jargon-text dasher-data"
apt-get download $pkgs
for deb in *.deb; do dpkg-deb -x "$deb" root; done

lz4=root/usr/share/gocode/src/github.com/pierrec/lz4/testdata
cp "$lz4/pg1661.txt" "$out/sherlock_holmes_pg1661.txt"
cp "$lz4/Mark.Twain-Tom.Sawyer.txt" "$out/tom_sawyer.txt"
zcat root/usr/share/doc/jargon-text/jargon.txt.gz > "$out/jargon.txt"
cp root/usr/share/dasher/training_english_GB.txt "$out/dasher_english_GB.txt"
# the whole Bible, as the `bible` program prints it from its data file
root/usr/bin/bible -p root/usr/lib gen1:1-rev22:21 > "$out/kjv.txt"

if command -v Rscript > /dev/null; then
    Rscript --vanilla - "$work/root/usr/lib/R/site-library" "$out" <<'REOF'
args <- commandArgs(trailingOnly = TRUE)
lib <- args[1]; out <- args[2]
for (b in c("emma", "mansfieldpark", "persuasion", "prideprejudice", "sensesensibility")) {
    e <- new.env(); data(list = b, package = "janeaustenr", lib.loc = lib, envir = e)
    writeLines(enc2utf8(get(b, envir = e)), file.path(out, paste0(b, ".txt")), useBytes = TRUE)
}
e <- new.env(); data(list = "mobydick", package = "tokenizers", lib.loc = lib, envir = e)
writeLines(enc2utf8(get("mobydick", envir = e)), file.path(out, "mobydick.txt"), useBytes = TRUE)
REOF
else
    echo "Rscript not found (apt-get install r-base-core): the Austen books and mobydick" \
        "were not extracted" >&2
    exit 1
fi
ls -l "$out"
