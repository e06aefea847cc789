"""Sample UPGPT's four tasks from a training run or converted weights.

  python sample.py --workdir workdirs/synthetic_tiny --task generate --out samples/
  python sample.py --workdir DIR --task pose_transfer --example 3 --out OUT
  python sample.py --workdir DIR --task edit --example 3 --edit "top=text:red striped top" --out OUT
      (with --edit "content=a woman in a red striped top" the edited sample's content text too)
  python sample.py --workdir DIR --task interpolate --start_smpl a.p --end_smpl b.p --frames 16 --out OUT
  python sample.py --workdir DIR --requests jobs.jsonl --out OUT        # one JSON request per line
  python sample.py --params weights/upgpt_256 --config configs/upgpt_256.py --task ... --out OUT
  python sample.py --params DIR --requests configs/demo_requests.jsonl --out OUT   # a run's release

With no condition flags, each task takes its conditions from the test split of the run's dataset
(unseen identities). A single request (the flags) writes into OUT itself, or OUT/<name>/ with
--name; each request of a --requests file writes OUT/<name>/ (default name: NNN_<task>). The
files: sample_*.png, grid.png, samples.json (seed, sampling settings, checkpoint, config,
conditions, and the inputs chosen by default, e.g. interpolation's poses, under "notes") and, for
interpolate, animation.gif (+ .mp4 with imageio-ffmpeg). The sampler
(--method/--num_steps/--eta/--guidance) defaults to the config's `sampling` section;
--released_no_guidance runs the released code's unguided sampling.
"""
import json

from absl import app, flags, logging

from upgpt_jax.cli_errors import BadInput, fail, one_line_errors, parse_flags
from upgpt_jax.cli_flags import check_model_flags, define_model_flags, define_sampler_flags, sampler_overrides

define_model_flags()
define_sampler_flags()

flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_enum("task", "generate", ["generate", "pose_transfer", "edit", "interpolate"], "The task.")
flags.DEFINE_string("requests", None, "A JSONL file of requests (run as one batch job).")
flags.DEFINE_string("name", None, "A single request's name: it writes into OUT/<name>/ instead of OUT.")
flags.DEFINE_integer("seed", None, "Noise seed of the (first) sample.")
flags.DEFINE_integer("num", None, "generate/pose_transfer: number of samples.")
flags.DEFINE_integer("example", None, "Dataset test example whose conditions to use.")
flags.DEFINE_string("text", None, "Content text.")
flags.DEFINE_string("smpl", None, "SMPL: FrankMocap .p/.pkl, .npz, .npy, .json, or example:K[:source].")
flags.DEFINE_string("mask", None, "Person mask image (default: a FrankMocap file's own mesh, else rendered "
                    "from the SMPL vector).")
flags.DEFINE_string("style_folder", None, "Style crops <part>.jpg in the original layout.")
flags.DEFINE_multi_string("style", [], "part=crop.jpg | part=text:words | part=example:K (generate).")
flags.DEFINE_string("target_smpl", None, "pose_transfer: the target pose (default: the example's).")
flags.DEFINE_multi_string("edit", [], "edit: part=text:words | part=crop.jpg | part=example:K | content=words "
                          "(the edited sample's content text; a part's text edit leaves it as it is).")
flags.DEFINE_string("start_smpl", None, "interpolate: first pose.")
flags.DEFINE_string("end_smpl", None, "interpolate: last pose.")
flags.DEFINE_integer("frames", None, "interpolate: number of frames.")
flags.DEFINE_enum("interpolation", None, ["linear", "slerp"], "interpolate: linear (the original) or slerp.")
flags.DEFINE_string("smpl_model_dir", None, "SMPL model files (smplx layout) to render person masks.")
flags.DEFINE_bool("released_no_guidance", False, "No guidance at all (one UNet call per step), as released.")


def single_request() -> dict:
    """The request the flags describe (only the flags that were given)."""
    values = {
        "task": flags.FLAGS.task, "name": flags.FLAGS.name, "seed": flags.FLAGS.seed, "num": flags.FLAGS.num,
        "example": flags.FLAGS.example, "text": flags.FLAGS.text, "mask": flags.FLAGS.mask,
        "style_folder": flags.FLAGS.style_folder, "frames": flags.FLAGS.frames,
        "interpolation": flags.FLAGS.interpolation, "start_smpl": flags.FLAGS.start_smpl,
        "end_smpl": flags.FLAGS.end_smpl, "target_smpl": flags.FLAGS.target_smpl,
        "styles": flags.FLAGS.style or None, "edits": flags.FLAGS.edit or None,
    }
    if flags.FLAGS.smpl:
        values["source_smpl" if flags.FLAGS.task == "pose_transfer" else "smpl"] = flags.FLAGS.smpl
    return {key: value for key, value in values.items() if value is not None}


def read_requests(path: str) -> list[dict]:
    """The JSON requests of a JSONL file (local or gs://), one object per non-empty line."""
    from upgpt_jax import storage

    try:
        lines = storage.path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--requests {path}: cannot read it ({type(error).__name__}: {error})") from None
    requests = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                request = json.loads(line)
            except json.JSONDecodeError as error:
                raise BadInput(f"{path}:{number}: not JSON ({error})") from None
            if not isinstance(request, dict):
                raise BadInput(f"{path}:{number}: expected a JSON object per line")
            requests.append(request)
    if not requests:
        raise BadInput(f"{path}: no requests")
    return requests


@one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.out:
        raise app.UsageError("--out is required")
    check_model_flags()
    from upgpt_jax.compilation_cache import enable_compilation_cache
    from upgpt_jax import sampling, storage
    from upgpt_jax.phases import phase

    overrides = sampler_overrides()
    enable_compilation_cache()
    requests = read_requests(flags.FLAGS.requests) if flags.FLAGS.requests else [single_request()]
    try:  # every request is checked before the weights are read or anything is compiled
        if flags.FLAGS.workdir:
            config = sampling.run_config(flags.FLAGS.workdir, flags.FLAGS.step)[0]
        else:
            config = flags.FLAGS.config or sampling.params_config(flags.FLAGS.params)
        jobs = sampling.plan_requests(config, requests, flags.FLAGS.smpl_model_dir)
    except (sampling.ConditionError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    for job in jobs:
        for key, value in job.notes.items():
            print(f"{job.name}: {key} = {value}")
    try:  # before the samples are computed: they would be lost
        storage.check_writable(flags.FLAGS.out)
    except OSError as error:
        raise BadInput(f"--out {flags.FLAGS.out} cannot be written ({type(error).__name__}: {error})") from None
    with phase("load the model"):
        if flags.FLAGS.workdir:
            loaded = sampling.load_from_workdir(flags.FLAGS.workdir, flags.FLAGS.step, flags.FLAGS.weights)
        else:
            loaded = sampling.load_from_params(flags.FLAGS.params, config)
    if flags.FLAGS.released_no_guidance:
        overrides["guidance"] = {name: 1.0 for name in loaded.config.sampling.guidance}
    settings = sampling.SamplingSettings.from_config(loaded.config.sampling, batch_size=flags.FLAGS.batch_size,
                                                     **overrides)
    subfolders = bool(flags.FLAGS.requests or flags.FLAGS.name)
    folders = sampling.run_jobs(loaded, jobs, flags.FLAGS.out, settings, subfolders=subfolders)
    for folder in folders:
        print(folder)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
