"""`evo1-ros convert --format lerobot`: an `evo1` dataset -> a LeRobot v3 dataset, written and
checked by LeRobot's own dataset library (PyPI `lerobot-dataset`, module `ledataset`).

That library cannot share our environment: it pins huggingface-hub < 0.36 where transformers 5
needs >= 1, and it imports torchvision, whose PyPI build does not load beside torch's CPU build.
`scripts/setup_lerobot.sh` gives it a venv of its own (`.venv-lerobot`), and `convert` runs this
module there as a script (`--lerobot-python`); on that side it needs only numpy, OpenCV and LeRobot.

One LeRobot frame per kept grid step of the `evo1` dataset:
    observation.images.<camera>   image (PNG in the parquet files, lossless) or, with --video,
                                  video (LeRobot's mp4 files, lossy)
    observation.state, action     float32 (7,): joint1..joint6 (rad), drive_joint
    intervention                  bool (1,): the action is an operator's, who took over from the
                                  policy (LeRobot's rollouts record the same for DAgger)
    task                          the episode's instruction
Timestamps are frame_index / fps, LeRobot's convention (steps the sync dropped are closed up, as
the evo1 trainer treats them). After writing, the dataset is read back with `LeRobotDataset` and
its frame count, states, actions and intervention flags are compared with the source.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

DEFAULT_PYTHON = ".venv-lerobot/bin/python"


class ExportError(ValueError):
    pass


def lerobot_python(explicit: str | None) -> str:
    """The interpreter that has LeRobot's dataset library: --lerobot-python, $EVO1_LEROBOT_PYTHON,
    or ./.venv-lerobot (scripts/setup_lerobot.sh)."""
    python = explicit or os.environ.get("EVO1_LEROBOT_PYTHON") or DEFAULT_PYTHON
    if not Path(python).is_file():
        raise ExportError(f"no LeRobot environment at {python}: run `bash scripts/setup_lerobot.sh` "
                          "(makes .venv-lerobot) or pass --lerobot-python / set EVO1_LEROBOT_PYTHON")
    return python


def run_export(evo1_dir: Path, out: Path, repo_id: str, video: bool, python: str) -> dict:
    """Export with `python` (from `lerobot_python`), LeRobot's environment; returns the summary
    the exporter prints (frames, episodes)."""
    package_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package_root), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    cmd = [python, "-m", "evo1_ros.data.lerobot_export", str(evo1_dir), str(out),
           "--repo-id", repo_id] + (["--video"] if video else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ExportError(f"LeRobot export of {evo1_dir} into {out} failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- everything below runs inside LeRobot's environment ----------------------------------------


def features(meta: dict, video: bool) -> dict:
    size = meta["image_size"]
    out = {f"observation.images.{cam}": {"dtype": "video" if video else "image", "shape": (size[0], size[1], 3),
                                         "names": ["height", "width", "channels"]}
           for cam in meta["cameras"]}
    out["observation.state"] = {"dtype": "float32", "shape": (len(meta["state_names"]),),
                                "names": list(meta["state_names"])}
    out["action"] = {"dtype": "float32", "shape": (len(meta["action_names"]),), "names": list(meta["action_names"])}
    out["intervention"] = {"dtype": "bool", "shape": (1,), "names": None}
    return out


def export(evo1_dir: Path, out: Path, repo_id: str, video: bool) -> dict:
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    from evo1_ros.data.images import decode_frame

    meta = json.loads((evo1_dir / "meta.json").read_text())
    fps = float(meta["fps"])
    if fps != round(fps):
        raise ExportError(f"{evo1_dir}: LeRobot datasets need a whole number of frames per second, "
                          f"this one is {fps} Hz; convert with an integer --rate")
    if out.exists():
        raise ExportError(f"{out} already exists")
    dataset = LeRobotDataset.create(repo_id, int(fps), features(meta, video), robot_type="xarm6", root=out,
                                    use_videos=video)
    states, actions, interventions = [], [], []
    for index, ep in enumerate(meta["episodes"]):
        with np.load(evo1_dir / ep["file"]) as npz:
            arrays = {k: npz[k] for k in npz.files}
        intervention = arrays.get("intervention", np.zeros(ep["length"], bool))  # datasets from before
        for k in range(ep["length"]):
            frame = {"observation.state": arrays["state"][k], "action": arrays["action"][k],
                     "intervention": intervention[k: k + 1], "task": ep["instruction"]}
            for cam in meta["cameras"]:
                start, end = arrays[f"offsets.{cam}"][k: k + 2]
                frame[f"observation.images.{cam}"] = decode_frame(arrays[f"frames.{cam}"][start:end])
            dataset.add_frame(frame)
        dataset.save_episode()
        states.append(arrays["state"][: ep["length"]])
        actions.append(arrays["action"][: ep["length"]])
        interventions.append(intervention[: ep["length"]])
        print(f"episode {index + 1}/{len(meta['episodes'])}: {ep['length']} frames", file=sys.stderr, flush=True)
    dataset.finalize()

    # Read it back the way a LeRobot user will, and check nothing was lost or altered.
    back = LeRobotDataset(repo_id, root=out)
    expected = sum(len(s) for s in states)
    if back.num_frames != expected or back.num_episodes != len(states):
        raise ExportError(f"{out}: read back {back.num_frames} frames / {back.num_episodes} episodes, "
                          f"wrote {expected} / {len(states)}")
    table = back.hf_dataset.with_format(None)
    for key, source in (("observation.state", states), ("action", actions), ("intervention", interventions)):
        source = np.concatenate(source)
        if not np.array_equal(np.asarray(table[key], source.dtype).reshape(source.shape), source):
            raise ExportError(f"{out}: {key} read back differs from {evo1_dir}")
    return {"frames": back.num_frames, "episodes": back.num_episodes, "fps": back.fps, "root": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description="evo1 dataset -> LeRobot v3 dataset (run in LeRobot's venv)")
    parser.add_argument("evo1_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--video", action="store_true")
    args = parser.parse_args()
    try:
        summary = export(args.evo1_dir, args.out, args.repo_id, args.video)
    except ExportError as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
