#!/usr/bin/env bash
# Run every shell block of README.md (```sh, ```bash or ```shell), top to
# bottom, as a newcomer would on a fresh clone: in ONE bash session under
# `set -euo pipefail`, so variables, files and background jobs carry over from
# one block to the next. A block is skipped only when the line right above its
# opening fence is
#
#   <!-- readme-blocks: skip — <reason> -->
#
# The session runs in a scratch copy of the repository (its tracked files, as
# they are in the working tree) whose `target` is a link to this repository's
# target directory ($CARGO_TARGET_DIR, else ./target), so the README's
# `cargo build --release` reuses what is built. It is its own process group:
# whatever the blocks start in the background is stopped at the end, and the
# whole run is bounded by READMEBLOCKS_TIMEOUT (seconds, default 900,
# a release build included). The blocks that run talk to loopback only, on
# the ports they name (checked free before the run).
#
#   scripts/readme-blocks.sh                  # README.md of this repository
#   READMEBLOCKS_KEEP=1 scripts/readme-blocks.sh   # keep the scratch copy to look at
#   scripts/readme-blocks.sh --print          # show what would run, by README line
#
# Prints each block's README line as it starts; on failure, names the line
# and the command that failed. Exit 0 when every block ran and exited 0.
# Needs curl, openssl and python3 (installed with apt-get when missing and root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readme=$repo/README.md
timeout_s=${READMEBLOCKS_TIMEOUT:-900}

say() { printf 'readme-blocks: %s\n' "$*" >&2; }

# ------------------------------------------------------------------- tools
need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "please install: ${need[*]}"
        exit 1
    fi
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
for tool in git setsid timeout awk tar; do
    command -v "$tool" >/dev/null || { say "$tool is required"; exit 1; }
done

# ---------------------------------------------- cleanup of what we started
pgid="" work=""
stop_group() {
    [[ -n $pgid ]] || return 0
    kill -TERM -- "-$pgid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 -- "-$pgid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
}
cleanup() {
    stop_group
    [[ -n $work ]] || return 0
    if [[ ${READMEBLOCKS_KEEP:-0} == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
work=$(mktemp -d "${TMPDIR:-/tmp}/readme-blocks.XXXXXX")

# ------------------------------------------------- README → session script
# The session has one line per README line, so bash's $LINENO is the README
# line: a README line that is not in a block to run becomes an empty line,
# an opening fence a call announcing the block.
session=$work/session.sh
counts=$work/counts
awk -v counts="$counts" '
    function fail(msg) { printf "readme-blocks: README.md:%d: %s\n", NR, msg > "/dev/stderr"; bad = 1; exit 2 }
    function emit(s) { print (NR == 1 ? ". \"$READMEBLOCKS_PRELUDE\"; " s : s) }
    BEGIN { marker = 0; infence = 0; shell = 0; run = 0; skipped = 0; heading = "(top)" }
    infence {
        if ($0 ~ /^```[ \t]*$/) { infence = 0; emit(""); next }
        emit(shell ? $0 : "")
        next
    }
    /^```/ {
        lang = substr($0, 4); sub(/[ \t]+$/, "", lang)
        infence = 1
        shell = (lang == "sh" || lang == "bash" || lang == "shell")
        if (shell && marker) { shell = 0; skipped++; emit(""); marker = 0; next }
        if (!shell && marker) fail("a readme-blocks marker must be right above a ```sh fence")
        if (shell) {
            run++
            h = heading; gsub(/\047/, "\047\\\047\047", h)
            emit("__readme_block " NR " \047" h "\047")
        } else emit("")
        next
    }
    marker { fail("a readme-blocks marker must be right above a ```sh fence") }
    /^<!-- *readme-blocks/ {
        if ($0 !~ /^<!-- readme-blocks: skip (—|-|--) [^ ].* -->[ \t]*$/)
            fail("write the marker as <!-- readme-blocks: skip — <reason> -->")
        marker = 1; emit(""); next
    }
    /^#+ / { heading = $0; sub(/^#+ +/, "", heading) }
    { emit("") }
    END {
        if (bad) exit 2
        if (infence) { printf "readme-blocks: README.md: a code block is not closed\n" > "/dev/stderr"; exit 2 }
        print run, skipped > counts
    }
' "$readme" >"$session"
read -r n_run n_skipped <"$counts"
if [[ ${1:-} == --print ]]; then
    grep -n . "$session"
    exit 0
fi

# ------------------------------------------------------ ports must be free
# The walk-throughs listen on fixed loopback ports; a leftover keygate (or
# anything else) there would answer in their place.
ports=$(grep -oE '(127\.0\.0\.1|localhost):[0-9]+' "$session" | sed 's/.*://' | sort -un | grep -vx 0 || true)
for port in $ports; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        say "127.0.0.1:$port is in use; the README's blocks listen there: stop what runs on it"
        exit 1
    fi
done

# ------------------------------------------------------------ scratch copy
scratch=$work/keygate
mkdir -p "$scratch"
git -C "$repo" ls-files -z | (cd "$repo" && tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$scratch"
target=${CARGO_TARGET_DIR:-$repo/target}
[[ $target == /* ]] || target=$repo/$target
mkdir -p "$target"
ln -s "$target" "$scratch/target"

cat >"$work/prelude.sh" <<'PRELUDE'
set -euo pipefail
cd "$READMEBLOCKS_SCRATCH"
__readme_block() {
    printf '%s\n' "$1" >"$READMEBLOCKS_STATE"
    printf '\n==> readme-blocks: README.md:%s (%s)\n' "$1" "$2" >&2
}
trap 'printf "readme-blocks: README.md:%s: exit %s: %s\n" "$LINENO" "$?" "$BASH_COMMAND" >&2' ERR
PRELUDE

# ------------------------------------------------------------------ the run
say "running $n_run blocks of README.md ($n_skipped skipped) in $scratch, at most ${timeout_s}s"
state=$work/state
echo "(none)" >"$state"
# Not a process group leader (no job control here), so setsid runs timeout in
# a new session without forking: $! is the group to stop.
env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    READMEBLOCKS_PRELUDE="$work/prelude.sh" READMEBLOCKS_STATE="$state" \
    READMEBLOCKS_SCRATCH="$scratch" \
    setsid timeout --kill-after=10 "$timeout_s" bash "$session" </dev/null &
pgid=$!
rc=0
wait "$pgid" || rc=$?
stop_group
pgid=""

block=$(cat "$state")
if ((rc == 124)); then
    say "FAIL: timed out after ${timeout_s}s in the block at README.md:$block"
    exit 1
elif ((rc != 0)); then
    say "FAIL: the block at README.md:$block exited $rc"
    exit 1
fi
say "ok: $n_run blocks ran, $n_skipped skipped"
