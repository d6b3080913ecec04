"""The benchmark runs end to end in smoke mode and writes a well-formed report (no timing thresholds)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import bench

#: Tiny, and one torch thread: on a busy 2-core machine two threads fight each other (several × slower).
#: The predict subprocess (≈ 10-20 s of imports on a busy machine) is covered below with a stand-in.
SMOKE_ARGS = ["--smoke", "--device", "cpu", "--size", "64", "--batch", "8", "--iters", "2", "--warmup", "1",
              "--data-images", "6", "--threads", "1", "--quiet", "--no-predict-cmd"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "benchmark.json"
    threads = torch.get_num_threads()
    code = bench.main([*SMOKE_ARGS, "--out", str(out)])
    assert code == 0
    assert torch.get_num_threads() == threads, "the benchmark must give the caller its thread count back"
    return json.loads(out.read_text())


def test_top_level_keys(report):
    for key in ("device", "torch", "size", "batch", "smoke", "train", "data", "eval", "latency", "gradcam",
                "memory", "compile", "settings", "notes"):
        assert key in report, key
    assert report["device"] == "cpu"
    assert report["smoke"] is True and report["compile"] is False
    assert report["size"] == 64 and report["batch"] == 8
    assert report["torch"] == torch.__version__


def test_train_section(report):
    t = report["train"]
    for key in ("tight_img_s", "tight_phase1_img_s", "project_phase1_img_s", "project_phase2_img_s",
                "ratio_phase1", "ratio_phase2", "full_profile_estimate_s"):
        assert _positive(t[key]), (key, t[key])
    assert t["iters"] == 2 and t["warmup"] == 1 and t["repeats"] == 1
    assert t["tight_img_s"] == max(t["tight_img_s_runs"])


def test_data_eval_gradcam_sections(report):
    d = report["data"]
    assert d["images"] == 6 and d["unreadable"] == 0
    for key in ("pil_img_s", "pil_epoch_s", "cache_build_s", "cache_build_img_s", "cache_load_img_s",
                "speedup_load_vs_pil"):
        assert _positive(d[key]), (key, d[key])
    assert _positive(report["eval"]["img_s"])
    g = report["gradcam"]
    assert g["batches"] == [1, 4]
    assert _positive(g["b1_maps_s"]) and _positive(g["b4_maps_s"])


def test_latency_and_memory(report):
    lat = report["latency"]
    assert lat["runs"] >= 20 and lat["threads"] == 1 and lat["device"] == "cpu"
    for key in ("predict_gradcam_ms_median", "predict_gradcam_ms_p90", "predict_forward_ms_median"):
        assert _positive(lat[key]), (key, lat[key])
    assert lat["predict_gradcam_ms_p90"] >= lat["predict_gradcam_ms_median"]
    assert lat["predict_cmd_wall_s"] is None and "skipped" in lat["predict_cmd_note"]
    mem = report["memory"]
    assert _positive(mem["cpu_peak_rss_mib"])
    assert mem["gpu_max_allocated_mib"] is None  # CPU run


def test_table_renders(report):
    text = bench.format_table(report)
    assert "tight loop" in text and "ratio phase 2" in text and "predict" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_cuda_without_gpu_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--device", "cuda", "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "cuda" in err.lower()
    assert not out.exists()


def test_bad_option_is_one_line_error(capsys):
    assert bench.main(["--batch", "0", "--smoke"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --batch must be at least 1")


class _Proc:
    def __init__(self, returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def test_predict_command_timed_and_parsed(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return _Proc(0, json.dumps({"probability": 0.25, "diagnosis": "NORMAL"}))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = bench.bench_predict_command(tmp_path / "m.pt", tmp_path / "x.jpeg", tmp_path, threads=1)
    assert _positive(out["predict_cmd_wall_s"]) and out["predict_cmd_probability"] == 0.25
    cmd = calls[0]
    assert cmd[1:3] == ["-m", "utils.deploy.predict"] and "--json" in cmd and "--output" in cmd


def test_predict_command_without_matplotlib_falls_back(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if "--no-overlay" not in cmd:
            return _Proc(1, stderr="Traceback ...\nModuleNotFoundError: No module named 'matplotlib'")
        return _Proc(0, json.dumps({"probability": 0.75}))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = bench.bench_predict_command(tmp_path / "m.pt", tmp_path / "x.jpeg", tmp_path)
    assert len(calls) == 2 and _positive(out["predict_cmd_wall_s"]) and "matplotlib" in out["predict_cmd_note"]


def test_predict_command_failure_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: _Proc(2, stderr="error: bad checkpoint"))
    out = bench.bench_predict_command(tmp_path / "m.pt", tmp_path / "x.jpeg", tmp_path)
    assert out["predict_cmd_wall_s"] is None and "exit 2" in out["predict_cmd_note"]


def test_int8_paths_benchmark_smoke(tmp_path):
    """The INT8 path comparison runs and reports both ONNX Runtime rows (torchao is skipped by --smoke)."""
    from benchmarks import int8_paths

    out = tmp_path / "int8_paths.json"
    assert int8_paths.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert {"fp32 eager (torch)", "fp32 ONNX Runtime", "int8 ORT QDQ"} <= set(report["results"])
    assert report["file_mb"]["int8 ORT QDQ"] < 0.5 * report["file_mb"]["fp32 ONNX Runtime"]
    assert all(v["latency_ms_median"] > 0 for v in report["results"].values())
    assert "skipped" in report["notes"]["int8 torchao PT2E + compile"]
    assert report["first_prediction_s"]["int8 ORT QDQ"] > 0


def test_untied_relu_resnet_computes_the_same_function():
    """The PT2E benchmark's copy with a separate post-addition ReLU per block is the same network."""
    import torch

    from benchmarks.int8_paths import _untie_relu
    from utils.train.model import build_model

    model, _ = build_model("none", seed=0)
    model.eval()
    untied = _untie_relu(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), untied(x), atol=1e-6)
    blocks = [m for m in untied.modules() if hasattr(m, "relu_out")]
    assert len(blocks) == 8 and all(b.relu_out is not b.relu for b in blocks)
    assert not any(hasattr(m, "relu_out") for m in model.modules())  # the original is untouched


# ------------------------------------------------------------------------------ benchmarks.demo_time
def _notebooks(folder, numbers=("01", "02")):
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in numbers:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            "import os, pathlib\n"
            "root = pathlib.Path(os.environ['CXR_PROJECT_ROOT'])\n"
            f"(root / 'ran_{n}').parent.mkdir(parents=True, exist_ok=True)\n"
            f"(root / 'ran_{n}').write_text(str(len(list(root.glob('ran_*')))))")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = folder / f"{n}_step.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def test_demo_time_runs_notebooks_in_order_in_one_fresh_root(tmp_path):
    from benchmarks import demo_time

    nbs = _notebooks(tmp_path / "repo" / "notebooks")
    root = tmp_path / "root"
    seconds = demo_time.time_notebooks(nbs, root, tmp_path / "executed", progress=False)
    assert list(seconds) == ["01", "02"] and all(s > 0 for s in seconds.values())
    # the second notebook saw what the first wrote, in the root it was given (papermill, a real kernel)
    assert (root / "ran_01").read_text() == "0" and (root / "ran_02").read_text() == "1"
    assert sorted(p.name for p in (tmp_path / "executed").iterdir()) == ["01_step.ipynb", "02_step.ipynb"]


def test_demo_time_failing_notebook_is_one_line_naming_it(tmp_path):
    from benchmarks import demo_time
    from utils.errors import UserError

    nbs = _notebooks(tmp_path / "nb", ("01", "02", "03"))
    calls = []

    def runner(nb, out, cwd, env):
        calls.append((nb.name, env["CXR_PROJECT_ROOT"]))
        return (1, "Traceback …\nValueError: boom\n") if nb.name.startswith("02") else (0, "")

    with pytest.raises(UserError, match=r"02_step.ipynb failed .*ValueError: boom.*see .*02_step.ipynb"):
        demo_time.time_notebooks(nbs, tmp_path / "root", tmp_path / "ex", env={}, runner=runner, progress=False)
    assert [c[0] for c in calls] == ["01_step.ipynb", "02_step.ipynb"]  # stops at the failure
    assert {c[1] for c in calls} == {str(tmp_path / "root")}


def test_demo_time_targets_are_reported_not_assumed():
    from benchmarks.demo_time import summarise

    fast = {f"{i:02d}": 60.0 for i in range(1, 11)}
    assert summarise(fast) == {"01-07": {"seconds": 420.0, "target_s": 600.0, "meets": True},
                               "01-09": {"seconds": 540.0, "target_s": 720.0, "meets": True},
                               "01-10": {"seconds": 600.0, "target_s": 840.0, "meets": True}}
    slow = {**fast, "08": 400.0}  # 01-09: 880 s > 12 min; 01-07 untouched
    assert [name for name, t in summarise(slow).items() if not t["meets"]] == ["01-09", "01-10"]
    on_the_line = {**fast, "10": 840.0 - 540.0}  # exactly 14 min for 01-10: a target is "at most"
    assert summarise(on_the_line)["01-10"]["meets"] is True
    assert summarise({**on_the_line, "10": 300.1})["01-10"]["meets"] is False
    nine = {n: s for n, s in fast.items() if n != "10"}  # a run without notebook 10 claims nothing for 01-10
    assert set(summarise(nine)) == {"01-07", "01-09"}
    assert summarise({"01": 5.0, "02": 5.0}) == {}  # a partial run claims no target


def test_demo_time_runs_every_numbered_notebook_but_the_index(tmp_path):
    """The default is what `make demo` runs: 01 up to the last number, two digits (10 included), never 00."""
    from benchmarks import demo_time

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("00_index.ipynb", "01_a.ipynb", "09_b.ipynb", "10_c.ipynb", "11_d.ipynb", "notes.ipynb",
                 "1_short.ipynb"):
        (folder / name).write_text("{}")
    assert [p.name for p in demo_time.numbered_notebooks(folder)] == ["01_a.ipynb", "09_b.ipynb", "10_c.ipynb",
                                                                      "11_d.ipynb"]
    assert [p.name for p in demo_time.numbered_notebooks(folder, only=["10"])] == ["10_c.ipynb"]


def test_demo_time_command_bad_notebook_number_is_one_line(capsys):
    from benchmarks import demo_time

    assert demo_time.main(["--only", "42", "--no-probe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no notebook numbered 42" in err[0]


def test_demo_time_report_with_a_fake_runner(tmp_path):
    import json

    from benchmarks import demo_time

    args = demo_time.build_parser().parse_args(["--only", "01", "02", "--no-probe", "--quiet",
                                                "--out", str(tmp_path / "r.json")])
    rep = demo_time.run(args, runner=lambda nb, out, cwd, env: (0, ""))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert list(saved["seconds"]) == ["01", "02"] and saved["targets"] == {} and saved["probe"] is None
    assert saved["machine"]["cores_available"] >= 1 and "load_average_1min" in saved["machine"]
    assert rep["_path"] == str(tmp_path / "r.json")
    assert "01:" in demo_time.format_report(saved)
