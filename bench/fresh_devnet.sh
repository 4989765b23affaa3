#!/usr/bin/env bash
# Issue 7's bar: from a fresh clone, the README's first command (`make devnet`) reaches a running
# devnet whose dashboard shows a settled round. Clones this repository's HEAD into a temporary
# directory, runs `make devnet` there with an empty HOME (no pip, npm or model caches of yours),
# polls the dashboard's /api/totals, stops the devnet, and prints one JSON object as its last line.
#     bash bench/fresh_devnet.sh [LIMIT_S]      (default limit 1500 s)
set -u
limit=${1:-1500}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d -t thinkmesh-fresh-XXXXXX)
mkdir -p "$work/home"
git clone -q "$repo" "$work/clone"
cd "$work/clone" || exit 1
log="$work/devnet.log"
start=$(date +%s)
HOME="$work/home" setsid make devnet > "$log" 2>&1 &
pid=$!
url="" settled=0 elapsed=0
while kill -0 "$pid" 2>/dev/null; do
  elapsed=$(( $(date +%s) - start ))
  [ "$elapsed" -gt "$limit" ] && break
  [ -z "$url" ] && url=$(grep -o "dashboard *http://[0-9.:]*" "$log" | head -1 | awk '{print $2}')
  if [ -n "$url" ]; then
    settled=$(curl -s "$url/api/totals" | python3 -c "import sys, json; print(json.load(sys.stdin).get('rounds_settled', 0))" 2>/dev/null || echo 0)
    [ "${settled:-0}" -ge 1 ] && break
  fi
  sleep 5
done
HOME="$work/home" .venv/bin/thinkmesh devnet down > /dev/null 2>&1 || true
sleep 5
kill -- -"$pid" 2> /dev/null
wait "$pid" 2> /dev/null
model_s=$(grep -o "built in [0-9]*s" "$log" | head -1 | grep -o "[0-9]*")
echo "log: $log" >&2
printf '{"bench": "fresh_devnet", "seconds_to_settled_round": %s, "rounds_settled": %s, "model_build_s": %s, "bar_s": 900, "meets_bar": %s}\n' \
  "$elapsed" "${settled:-0}" "${model_s:-null}" "$([ "${settled:-0}" -ge 1 ] && [ "$elapsed" -le 900 ] && echo true || echo false)"
