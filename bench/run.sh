#!/usr/bin/env bash
# Side-by-side encoder benchmark: ours vs PyTorch (transformers for ViT-B/32 and SigLIP-B/16,
# open_clip for RN50 and EVA02-B/16),
# same random full-size weights, same inputs, same thread count, one after the other.
#
#   bench/run.sh [THREADS] [MODELS...]   (default: 2 vit-b-32 rn50; also siglip-b-16 eva02-b-16;
#                                         needs the venv of scripts/fixtures/requirements.txt,
#                                         PYTHON=its python)
#
# ROUNDS=N (default 1) alternates the two sides N times and keeps each side's best throughput
# per case: on a machine shared with other work, the best round is the one least disturbed.
# Writes bench/out/encoders-<model>.md (and the raw rounds to bench/out/encoders-<model>.rounds).
# PRECISION=bf16 runs both sides in bfloat16: ours `--precision bf16`, PyTorch's bf16 autocast
# (files encoders-<model>-bf16.*); the parity lines then measure bfloat16's cost.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/simd.sh
THREADS=${1:-2}
shift || true
MODELS=${*:-vit-b-32 rn50}
PYTHON=${PYTHON:-venv/bin/python}
mkdir -p bench/out
cargo bench $CARGO_FEATURES --bench encoders --no-run -q
for m in $MODELS; do
  dir=bench/out/$m
  [ -f "$dir/check.safetensors" ] || "$PYTHON" bench/make_weights.py "$m" "$dir"
  ours=() theirs=() loads=()
  for _ in $(seq "${ROUNDS:-1}"); do
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
    ours+=("$(RAYON_NUM_THREADS=$THREADS cargo bench $CARGO_FEATURES -q --bench encoders -- "$dir" "$THREADS")")
    theirs+=("$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PYTHON" bench/torch_encoders.py "$dir" "$THREADS")")
  done
  # The raw rounds, kept so that the table can be rebuilt or checked.
  out=bench/out/encoders-$m${PRECISION:+-$PRECISION}
  printf 'ours %s\n' "${ours[@]}" > "$out.rounds"
  printf 'theirs %s\n' "${theirs[@]}" >> "$out.rounds"
  "$PYTHON" - "$m" "$(printf '%s\n' "${ours[@]}")" "$(printf '%s\n' "${theirs[@]}")" "${loads[*]}" <<'PY' | tee "$out.md"
import json, sys
def best(lines):
    runs = [json.loads(l) for l in lines.splitlines() if l.strip()]
    out = dict(runs[0])
    for key in ("per_s", "gflops"):
        out[key] = {k: max(r[key][k] for r in runs) for k in runs[0].get(key, {})}
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    out["rounds"] = len(runs)
    return out
name, ours, theirs, loads = sys.argv[1], best(sys.argv[2]), best(sys.argv[3]), sys.argv[4].split()
print(f"{name}, random weights, {ours.get('precision', 'f32')}, {ours['threads']} threads, best of {ours['rounds']} alternating round(s)")
print(f"CPU: {ours['cpu']}; our kernels: {ours['simd']}; torch's ATen: {theirs.get('cpu_capability', '?')}; 1-minute load average at each round's start: {', '.join(loads)}")
if ours.get("parity"):
    p = ours["parity"]
    print(f"full-size parity: max abs diff {p['max_abs_diff']:.3e} on image embeddings up to {p['max_abs_reference']:.3e}")
    if "text_max_abs_diff" in p:
        print(f"full-size text parity: max abs diff {p['text_max_abs_diff']:.3e} on text embeddings up to {p['text_max_abs_reference']:.3e}")
print()
print(f"| GEMM (M x K x N) | ours (GFLOP/s) | torch (GFLOP/s) | ratio |")
print("|---|---|---|---|")
for case, v in sorted(ours["gflops"].items(), key=lambda kv: -int(kv[0].split()[1].split("x")[0])):
    t = theirs["gflops"][case]
    print(f"| {case[5:]} | {v:.0f} | {t:.0f} | {v / t:.2f} |")
large = "gemm 2048x2048x2048"
peak = max(ours["gflops"][large], theirs["gflops"][large])
print()
print(f"Effective rate: the reference's FLOPs per item (torch.utils.flop_counter, every text position: 77, SigLIP 64) x items/s,")
print(f"as a fraction of the machine's large-GEMM rate: the better side's 2048^3 above ({peak:.0f} GFLOP/s).")
print()
print(f"| case | {ours['impl']} (/s) | {theirs['impl']} (/s) | ratio | GFLOP per item | ours GFLOP/s (fraction) | torch GFLOP/s (fraction) |")
print("|---|---|---|---|---|---|---|")
for case, v in ours["per_s"].items():
    t = theirs["per_s"][case]
    f = theirs.get("flops_per_item", {}).get(case)
    if f and "short" not in case:
        eff = f"| {f / 1e9:.2f} | {v * f / 1e9:.0f} ({v * f / 1e9 / peak:.0%}) | {t * f / 1e9:.0f} ({t * f / 1e9 / peak:.0%}) |"
    else:
        eff = "| | | |"
    print(f"| {case} | {v:.2f} | {t:.2f} | {v / t:.2f} {eff}")
print(f"| peak RSS (MiB) | {ours['peak_rss_mib']:.0f} | {theirs['peak_rss_mib']:.0f} | | | | |")
PY
done
