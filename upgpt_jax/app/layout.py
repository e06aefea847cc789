"""The page: sampler settings and the pose gallery on top, one tab per task.

Every tab's button turns its inputs into a request (requests.py) and hands it to the service; a
bad input shows sample.py's one-line message in the tab's status line and the server goes on.
All sampling events share one queue slot ("sampler"): requests from several browsers wait their
turn and each browser gets its own results.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gradio as gr

from upgpt_jax.app import requests
from upgpt_jax.app.service import Result, SamplingService, error_line
from upgpt_jax.config_base import STYLE_PARTS
from upgpt_jax.diffusion import GUIDANCE_ORDER
from upgpt_jax.smpl.interpolate import METHODS

SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
Values = Mapping[str, Any]


def build_page(service: SamplingService, gallery: dict[str, Any], thumbnails: list) -> gr.Blocks:
    """The Gradio Blocks of the app (not launched)."""
    defaults = service.defaults
    with gr.Blocks(title="UPGPT") as page:
        gr.Markdown("# UPGPT: generation, pose transfer, editing, interpolation")
        status = gr.Markdown("Loading…", elem_id="status")
        with gr.Accordion("Sampler", open=True):
            with gr.Row():
                settings = {
                    "method": gr.Dropdown(list(SAMPLERS), value=defaults.method, label="sampler"),
                    "num_steps": gr.Number(defaults.num_steps, precision=0, minimum=1, label="steps"),
                    "seed": gr.Number(0, precision=0, label="seed", elem_id="seed"),
                    **{f"guidance_{name}": gr.Number(dict(defaults.guidance).get(name, 1.0), label=f"guidance {name}")
                       for name in GUIDANCE_ORDER},
                }
        with gr.Accordion("Pose gallery (person masks of the poses the pickers offer)", open=False):
            gr.Gallery(thumbnails, columns=8, height="auto", format="png", interactive=False)
        with gr.Tab("Generate"):
            _generate_tab(service, gallery, settings)
        with gr.Tab("Pose transfer"):
            _pose_transfer_tab(service, gallery, settings)
        with gr.Tab("Edit"):
            _edit_tab(service, settings)
        with gr.Tab("Interpolate"):
            _interpolate_tab(service, gallery, settings)
        page.load(functools.partial(_wait_for_warm_up, service), outputs=status, concurrency_limit=None)
    return page


def _wait_for_warm_up(service: SamplingService) -> Iterator[str]:
    """The page's status: compiling (shown at once, so the page never looks frozen), then ready."""
    if not service.ready.is_set():
        yield "Compiling the sampler (first request); the page is usable, requests wait for it…"
    while not service.ready.wait(0.5):
        pass
    if service.warm_up_error:
        yield f"Ready, but the start-up sample failed ({service.warm_up_error}); requests compile on first use."
    else:
        yield f"Ready. First compile and sample took {service.warm_up_seconds:.0f} s."


def _pose_picker(label: str, gallery: dict[str, Any], prefix: str, default: int = 0) -> dict[str, gr.components.Component]:
    names = list(gallery)
    return {f"{prefix}_choice": gr.Dropdown(names, value=names[min(default, len(names) - 1)], label=label),
            f"{prefix}_upload": gr.File(label=f"{label}: or an SMPL file (.p/.pkl, .npz, .npy, .json)", height=120)}


def _outputs(prefix: str) -> tuple[gr.Markdown, gr.Gallery, gr.Image, gr.Gallery]:
    status = gr.Markdown(elem_id=f"{prefix}_status")
    with gr.Row():
        samples = gr.Gallery(label="samples", elem_id=f"{prefix}_samples", format="png", columns=4, height=320)
        mask = gr.Image(label="person mask", elem_id=f"{prefix}_mask", format="png", interactive=False, height=320)
        references = gr.Gallery(label="references", format="png", columns=2, height=320)
    return status, samples, mask, references


def _still_outputs(result: Result) -> tuple:
    return result.samples(), result.mask(), result.references()


def _generate_tab(service: SamplingService, gallery: dict[str, Any], settings: Values) -> None:
    inputs = {"text": gr.Textbox("a person in a red top and blue trousers", label="content text", elem_id="gen_text"),
              "num": gr.Slider(1, 4, value=1, step=1, label="samples"), **_pose_picker("pose", gallery, "pose")}
    with gr.Accordion("Styles per part: an image crop, a style text, or the part of a test example", open=False,
                      elem_id="gen_styles"):
        for part in STYLE_PARTS:
            with gr.Row():
                inputs[f"crop_{part}"] = gr.File(label=f"{part} crop", elem_id=f"gen_crop_{part}", height=120)
                inputs[f"text_{part}"] = gr.Textbox(label=f"{part} style text")
                inputs[f"example_{part}"] = gr.Textbox(label=f"{part} from test example (number)")
    button = gr.Button("Generate", variant="primary", elem_id="gen_run")
    outputs = _outputs("gen")

    def build(values: Values) -> dict[str, Any]:
        styles = requests.style_assignments({part: (values[f"crop_{part}"], values[f"text_{part}"],
                                                    values[f"example_{part}"]) for part in STYLE_PARTS})
        pose = requests.pose_spec(values["pose_choice"], values["pose_upload"], gallery, "pose")
        return requests.generate_request(values["text"], pose, styles, values["num"], values["seed"])

    _wire(service, button, inputs, settings, outputs, build, _still_outputs)


def _pose_transfer_tab(service: SamplingService, gallery: dict[str, Any], settings: Values) -> None:
    inputs = {"example": gr.Number(0, precision=0, label="person: test example"),
              "crops": gr.File(file_count="multiple", label="or the person's crops, named <part>.jpg/.png", height=120),
              "text": gr.Textbox(label="content text (needed with crops; replaces the example's)"),
              **_pose_picker("target pose", gallery, "target")}
    button = gr.Button("Transfer", variant="primary", elem_id="transfer_run")
    outputs = _outputs("transfer")

    def build(values: Values) -> dict[str, Any]:
        target = requests.pose_spec(values["target_choice"], values["target_upload"], gallery, "target pose")
        return requests.pose_transfer_request(values["example"], values["crops"], values["text"], target,
                                              values["seed"])

    _wire(service, button, inputs, settings, outputs, build, _still_outputs)


def _edit_tab(service: SamplingService, settings: Values) -> None:
    inputs = {"example": gr.Number(0, precision=0, label="person: test example"),
              "part": gr.Dropdown(list(STYLE_PARTS), value="top", allow_custom_value=True, label="part to edit"),
              "text": gr.Textbox(label="new style text", elem_id="edit_text"),
              "crop": gr.File(label="or a new style image", height=120),
              "donor": gr.Textbox(label="or that part of test example (number)")}
    button = gr.Button("Edit", variant="primary", elem_id="edit_run")
    outputs = _outputs("edit")

    def build(values: Values) -> dict[str, Any]:
        return requests.edit_request(values["example"], values["part"], values["text"], values["crop"],
                                     values["donor"], values["seed"])

    _wire(service, button, inputs, settings, outputs, build, _still_outputs)


def _interpolate_tab(service: SamplingService, gallery: dict[str, Any], settings: Values) -> None:
    inputs = {"example": gr.Number(0, precision=0, label="person: test example"),
              "frames": gr.Slider(2, 32, value=8, step=1, label="frames"),
              "interpolation": gr.Radio(list(METHODS), value="slerp", label="interpolation"),
              **_pose_picker("start pose", gallery, "start"), **_pose_picker("end pose", gallery, "end", default=1)}
    button = gr.Button("Interpolate", variant="primary", elem_id="interp_run")
    status = gr.Markdown(elem_id="interp_status")
    with gr.Row():
        animation = gr.Image(label="animation", type="filepath", interactive=False, height=320)
        frames = gr.Gallery(label="frames", format="png", columns=8, height=320)
    mask = gr.Image(label="person masks", format="png", interactive=False, height=160)

    def build(values: Values) -> dict[str, Any]:
        start = requests.pose_spec(values["start_choice"], values["start_upload"], gallery, "start pose")
        end = requests.pose_spec(values["end_choice"], values["end_upload"], gallery, "end pose")
        return requests.interpolate_request(values["example"], start, end, values["frames"], values["interpolation"],
                                            values["seed"])

    def show(result: Result) -> tuple:
        return result.animation(), result.samples(), result.mask()

    _wire(service, button, inputs, settings, (status, animation, frames, mask), build, show)


def _wire(service: SamplingService, button: gr.Button, inputs: Values, settings: Values, outputs: tuple,
          build: Callable[[Values], dict[str, Any]], show: Callable[[Result], tuple]) -> None:
    """button -> build the request -> sample -> (status line, *show(result)); errors as one line."""
    assert not set(inputs) & set(settings), f"tab inputs named like sampler settings: {set(inputs) & set(settings)}"
    inputs = {**inputs, **settings}
    names = list(inputs)
    blank = (None,) * (len(outputs) - 1)

    def run(*arguments: Any) -> Iterator[tuple]:
        values = dict(zip(names, arguments))
        try:
            request = build(values)
            sampling = service.settings(values["method"], requests.whole_number(values["num_steps"], "steps"),
                                        {name: requests.real_number(values[f"guidance_{name}"], f"guidance {name}")
                                         for name in GUIDANCE_ORDER})
            if not service.is_compiled(sampling, request["task"]):
                yield ("Compiling the sampler for these settings (once per setting), then sampling…", *blank)
            result = service.run(request, sampling)
        except (ValueError, FileNotFoundError) as error:  # ConditionError is a ValueError
            yield (error_line(error), *blank)
            return
        yield (f"Done in {result.seconds:.1f} s.", *show(result))

    button.click(run, inputs=list(inputs.values()), outputs=list(outputs), concurrency_id="sampler",
                 concurrency_limit=1)
