"""The interactive app (`python -m upgpt_jax.app --workdir DIR`): UPGPT's four tasks in a browser.

A Gradio page over one loaded model: every click becomes the same request dict that sample.py
reads from JSONL (`requests.py`), planned and checked by the sampling package and sampled by a
compiled sampler that is kept per sampler setting (`service.py`); `poses.py` gathers the pose
gallery and `layout.py` lays the page out. Needs the `app` extra: `pip install -e ".[app]"`.
"""
