#!/usr/bin/env bash
# Fetch a data set that vfm_lab reads from disk, verifying every download by SHA-256.
#
#   bash data_scripts/fetch.sh NAME [DEST]
#
#   fashion-mnist  as root with apt-get and no DEST: apt-get install dataset-fashion-mnist
#                  (files land in /usr/share/datasets/fashion-mnist); otherwise the four
#                  upstream .gz files into DEST (default data/fashion-mnist)
#   cifar10        cifar-10-python.tar.gz into DEST (default data/cifar10), extracted there
#                  to DEST/cifar-10-batches-py
#
# A file that fails its checksum is deleted and the script exits 1 naming it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
names="fashion-mnist cifar10"
python="${PYTHON:-python3}"

# Upstream SHA-256s. Fashion-MNIST publishes MD5s only (README of zalandoresearch/fashion-mnist:
# 8d4fb7e6c68d591d4c3dfef9ec88bf0d, 25c81989df183df01b3e8a0aad5dffbe, bef4ecab320f06d8554ea6380940ec79,
# bb300cfdad3c16e7a12a480ee83cd310). The Debian files hold the same deflate streams under a rewritten
# gzip header (no file name, 2020 mtime); restoring the upstream header reproduces those MD5s exactly,
# and these are the SHA-256s of the reproduced files (they also match torchvision's and chainer's tables).
fashion_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
declare -A fashion_sha256=(
  [train-images-idx3-ubyte.gz]=3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84
  [train-labels-idx1-ubyte.gz]=a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845
  [t10k-images-idx3-ubyte.gz]=346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073
  [t10k-labels-idx1-ubyte.gz]=67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5
)
cifar_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
cifar_sha256=6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce  # md5 c58f30108f718f92721af3b95e74349a

usage() {
  echo "usage: bash data_scripts/fetch.sh NAME [DEST]; NAME is one of: $names" >&2
  exit 2
}

# fetch URL FILE SHA256 RERUN: download to FILE.part, verify, then move into place.
fetch() {
  local url=$1 file=$2 sha=$3 rerun=$4
  if [[ -f $file ]] && "$python" "$here/verify.py" "$file" "$sha" --rerun "$rerun" 2>/dev/null; then
    return 0  # already here and verified
  fi
  echo "downloading $url"
  if command -v curl >/dev/null; then
    curl -fL --retry 3 -o "$file.part" "$url"
  else
    wget -O "$file.part" "$url"
  fi || { rm -f "$file.part"; echo "error: download of $url failed; rerun \`$rerun\`" >&2; exit 1; }
  "$python" "$here/verify.py" "$file.part" "$sha" --rerun "$rerun" || exit 1
  mv "$file.part" "$file"
}

[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
case $name in
  fashion-mnist)
    if [[ $# -eq 1 && $EUID -eq 0 ]] && command -v apt-get >/dev/null \
        && apt-get install -y dataset-fashion-mnist; then
      echo "fashion-mnist installed in /usr/share/datasets/fashion-mnist (apt verified the package)"
      exit 0
    fi
    dest=${2:-data/fashion-mnist}
    mkdir -p "$dest"
    for file in "${!fashion_sha256[@]}"; do
      fetch "$fashion_url/$file" "$dest/$file" "${fashion_sha256[$file]}" "bash data_scripts/fetch.sh $*"
    done
    echo "fashion-mnist is in $dest"
    ;;
  cifar10)
    dest=${2:-data/cifar10}
    mkdir -p "$dest"
    fetch "$cifar_url" "$dest/cifar-10-python.tar.gz" "$cifar_sha256" "bash data_scripts/fetch.sh $*"
    tar -xzf "$dest/cifar-10-python.tar.gz" -C "$dest"
    echo "cifar10 is in $dest/cifar-10-batches-py (the verified archive $dest/cifar-10-python.tar.gz may be deleted)"
    ;;
  *)
    echo "error: unknown data set '$name'" >&2
    usage
    ;;
esac
