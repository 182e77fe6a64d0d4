"""FID and KID of one checkpoint over sampling seeds: mean +- standard error of the per-seed values,
and the values of all seeds' samples pooled.

Reads what `--mode eval` wrote for each seed (`--config.seed=S`, same sampler otherwise):
`W/eval/ckpt_<step>/<method>_<key>/{settings.json,eval.json,features_*.npz}`. Usage:

    for s in 0 1 2; do python main.py --config C --workdir W --mode eval \\
        --config.eval.enable_loss=False --config.eval.enable_bpd=False --config.seed=$s; done
    python benchmarks/fid_kid_seeds.py --config C --workdir W --step 2000
"""
import argparse
import glob
import json
import os

import numpy as np

from score_jax import config_lib, metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, required=True)
    args = parser.parse_args()
    config = config_lib.load_config(args.config)
    rows, pools = [], []
    for folder in sorted(glob.glob(os.path.join(args.workdir, "eval", f"ckpt_{args.step}", "*_*"))):
        if not os.path.exists(os.path.join(folder, "eval.json")):
            continue
        with open(os.path.join(folder, "settings.json")) as f:
            settings = json.load(f)
        with open(os.path.join(folder, "eval.json")) as f:
            result = json.load(f)
        if "fid" not in result:
            continue
        rows.append((settings["seed"], result["num_samples"], result["fid"], result["kid"]))
        pools.append(np.concatenate([np.load(p)["pool_3"] for p in sorted(
            glob.glob(os.path.join(folder, "features_*.npz")))]))
    if not rows:
        raise SystemExit(f"no eval with FID in {args.workdir}/eval/ckpt_{args.step}/")
    print("| seed | samples | FID | KID |\n|---:|---:|---:|---:|")
    for seed, n, fid, kid in sorted(rows):
        print(f"| {seed} | {n} | {fid:.2f} | {kid:.5f} |")
    fids, kids = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    se = lambda v: np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    print(f"| mean +- s.e. ({len(rows)} seeds) | | {fids.mean():.2f} +- {se(fids):.2f} | "
          f"{kids.mean():.5f} +- {se(kids):.5f} |")
    pooled = metrics.fid_kid(np.concatenate(pools), metrics.reference_stats(config), config)
    print(f"| pooled | {sum(len(p) for p in pools)} | {pooled['fid']:.2f} | "
          f"{pooled['kid']:.5f} (+- {pooled['kid_std']:.5f} over subsets) |")


if __name__ == "__main__":
    main()
