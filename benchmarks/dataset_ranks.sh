#!/usr/bin/env bash
# A dataset run of the 64 report faces (test split 0-63), x8 super-resolution, MAP: one process vs
# 2 torchrun CPU ranks (gloo), outputs compared byte for byte, wall times. Usage:
#   bash benchmarks/dataset_ranks.sh [WORKDIR] [STEPS]
set -euo pipefail
W=${1:-/tmp/brgm_dataset_ranks}; STEPS=${2:-100}
export OMP_NUM_THREADS=1
rm -rf "$W" && mkdir -p "$W/faces"
python - "$W/faces" <<'PY'
import sys
from PIL import Image
from brgm_pyro.data.faces import face_image_uint8
for i in range(64):
    Image.fromarray(face_image_uint8(i, "test")).save(f"{sys.argv[1]}/face_{i:02d}.png")
PY
ARGS=(reconstruct "$W/faces" --task superres --factor 8 --kernel bicubic --simulate --method map --steps "$STEPS"
      --batch-size 8 --threads 1 -q)
t0=$(date +%s.%N); python -m brgm_pyro "${ARGS[@]}" --out "$W/one"; t1=$(date +%s.%N)
python -m torch.distributed.run --standalone --nproc-per-node 2 -m brgm_pyro "${ARGS[@]}" --out "$W/two"; t2=$(date +%s.%N)
python - "$W" "$t0" "$t1" "$t2" <<'PY'
import json, sys
from pathlib import Path
w, t0, t1, t2 = Path(sys.argv[1]), *map(float, sys.argv[2:])
files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.glob("*/*.png"))}
a, b = files(w / "one"), files(w / "two")
s = json.loads((w / "one" / "summary.json").read_text())
print(json.dumps({"images": s["images"], "png_files": len(a), "identical": a == b,
                  "one_process_s": round(t1 - t0, 1), "two_ranks_s": round(t2 - t1, 1),
                  "wall_ratio_one_over_two": round((t1 - t0) / (t2 - t1), 2), "mean_psnr": s.get("mean_psnr")}))
PY
