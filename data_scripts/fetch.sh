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
#   emoji          Debian fonts-noto-color-emoji + unicode-data (emoji-test.txt)    } sources into DEST/downloads,
#   openmoji       the npm package openmoji (colour SVGs + data/openmoji.json)      } then the index
#   openclipart    Debian openclipart-png + openclipart-svg (titles and keywords)   } DEST/v1 (default data/NAME)
#
# Icon sets: the pinned .deb files (apt-get download, checked against the SHA-256s below; where
# dpkg already has the pinned versions installed, their files are used instead) or the npm tarball
# (npm pack, checked against its sha512 integrity) are unpacked into a temporary folder, and
# `python -m vfm_lab.data.icons build` renders DEST/v1/index.npz, index.json and MANIFEST.sha256
# (PYTHON, by default the checkout's .venv/bin/python, must have vfm_lab, Pillow and cairosvg).
# An index whose manifest verifies is kept; REBUILD=1 rebuilds it (same sources, same bytes).
#
# A file that fails its checksum is deleted and the script exits 1 naming it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
names="fashion-mnist cifar10 emoji openmoji openclipart"
python="${PYTHON:-python3}"
[[ -z ${PYTHON:-} && -x $here/../.venv/bin/python ]] && python="$here/../.venv/bin/python"  # the checkout's venv

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

# Icon sources: Debian 12 packages (SHA-256 of the .deb, as in the signed Packages index) and the npm tarball.
declare -A deb_version=(
  [fonts-noto-color-emoji]=2.042-0+deb12u1 [unicode-data]=15.0.0-1
  [openclipart-png]=1:0.18+dfsg-19 [openclipart-svg]=1:0.18+dfsg-19
)
declare -A deb_sha256=(
  [fonts-noto-color-emoji]=a5ab0f69c7938423862320d9aca5dd187b3fd879d6a9a57dd52e17c3fa8d2751
  [unicode-data]=5efef23bbb1c6a133ecbdd63a2cfa07159ccacf5466a49e2426101c5ecd691fc
  [openclipart-png]=f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02
  [openclipart-svg]=989712d90d57dfa3230049f553bb43b76c30ee4d4b8c5f6e106e33f7db5cbdc5
)
openmoji_version=17.0.0
openmoji_integrity=sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==

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

# debian_sources DEST ROOT PKG...: sets source_root to a folder holding the pinned packages' files: /
# when dpkg has exactly the pinned versions installed, else ROOT, where each .deb, downloaded to
# DEST/downloads (kept for offline rebuilds) and verified, is unpacked. Uses $rerun in messages.
debian_sources() {
  local dest=$1 root=$2 pkg deb installed=1
  shift 2
  for pkg in "$@"; do
    [[ $(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) == "${deb_version[$pkg]}" ]] || installed=0
  done
  if [[ $installed -eq 1 ]]; then
    source_root=/
    echo "using the installed $* (apt verified them)"
    return 0
  fi
  mkdir -p "$dest/downloads"
  for pkg in "$@"; do
    deb="$dest/downloads/${pkg}_${deb_version[$pkg]/:/%3a}_all.deb"
    if ! [[ -f $deb ]] || ! "$python" "$here/verify.py" "$deb" "${deb_sha256[$pkg]}" 2>/dev/null; then
      echo "downloading $pkg ${deb_version[$pkg]}"
      (cd "$dest/downloads" && apt-get download "$pkg=${deb_version[$pkg]}" 2>/dev/null) \
        || { [[ $EUID -eq 0 ]] && apt-get update -qq && (cd "$dest/downloads" && apt-get download "$pkg=${deb_version[$pkg]}"); } \
        || { echo "error: apt-get download $pkg=${deb_version[$pkg]} failed (no apt, no network, or the mirror" \
                  "no longer has this version: update the pins in data_scripts/fetch.sh); rerun \`$rerun\`" >&2; exit 1; }
      "$python" "$here/verify.py" "$deb" "${deb_sha256[$pkg]}" --rerun "$rerun" || exit 1
    fi
    dpkg -x "$deb" "$root"
  done
  source_root=$root
}

# build_icons NAME DEST SOURCE NOTE: render the index DEST/v1 from SOURCE, then check its manifest.
build_icons() {
  local name=$1 dest=$2 source=$3 note=$4
  "$python" -m vfm_lab.data.icons build "$name" "$source" "$dest" --note "$note"
  "$python" "$here/verify.py" --manifest "$dest/v1/MANIFEST.sha256" --rerun "$rerun"
}

[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
case $name in
  fashion-mnist)
    # a fresh machine may have no package lists yet: update them once if the first install fails
    if [[ $# -eq 1 && $EUID -eq 0 ]] && command -v apt-get >/dev/null \
        && { apt-get install -y dataset-fashion-mnist || { apt-get update -q && apt-get install -y dataset-fashion-mnist; }; }; then
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
  emoji|openmoji|openclipart)
    dest=${2:-data/$name}
    rerun="bash data_scripts/fetch.sh $*"
    mkdir -p "$dest"
    if [[ -z ${REBUILD:-} ]] && "$python" "$here/verify.py" --manifest "$dest/v1/MANIFEST.sha256" >/dev/null 2>&1; then
      echo "$name is in $dest/v1 (manifest verified; REBUILD=1 rebuilds it)"
      exit 0
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir "$work/root"
    case $name in
      emoji)
        debian_sources "$dest" "$work/root" fonts-noto-color-emoji unicode-data
        build_icons emoji "$dest" "$source_root" \
          "fonts-noto-color-emoji ${deb_version[fonts-noto-color-emoji]}, unicode-data ${deb_version[unicode-data]}"
        ;;
      openclipart)
        debian_sources "$dest" "$work/root" openclipart-png openclipart-svg
        build_icons openclipart "$dest" "$source_root" "openclipart-png and openclipart-svg ${deb_version[openclipart-png]}"
        ;;
      openmoji)
        tarball="$dest/downloads/openmoji-$openmoji_version.tgz"
        mkdir -p "$dest/downloads"
        if ! [[ -f $tarball ]] || ! "$python" "$here/verify.py" "$tarball" "$openmoji_integrity" 2>/dev/null; then
          npm pack "openmoji@$openmoji_version" --pack-destination "$dest/downloads" --loglevel=error >/dev/null \
            || { echo "error: npm pack openmoji@$openmoji_version failed; rerun \`$rerun\`" >&2; exit 1; }
          "$python" "$here/verify.py" "$tarball" "$openmoji_integrity" --rerun "$rerun" || exit 1
        fi
        tar -xzf "$tarball" -C "$work/root" package/data/openmoji.json package/color/svg
        build_icons openmoji "$dest" "$work/root/package" "npm openmoji $openmoji_version"
        ;;
    esac
    echo "$name is in $dest/v1 (sources in $dest/downloads, kept for offline rebuilds)"
    ;;
  *)
    echo "error: unknown data set '$name'" >&2
    usage
    ;;
esac
