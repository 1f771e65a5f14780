"""The GPU throughput command, run tiny on CPU: real stage-1 / stage-2 steps, a record per arm, and no import
beyond what a bare GPU machine has (torch, numpy, scipy, safetensors, tqdm, pyyaml, matplotlib, pandas)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disback.__main__ import main
from disback.networks.presets import EDM_TEACHERS, edm_teacher_kwargs, forward_flops, random_edm_teacher
from disback.steps import draw_latents
from disback.throughput import arm_config, run_throughput

ROOT = Path(__file__).resolve().parents[1]
# Packages the notebooks and tests use that the GPU machine lacks: importing any of them must not be needed.
ABSENT_ON_GPU_MACHINE = ("ot", "sklearn", "papermill", "torch_fidelity", "nbformat", "seaborn", "torchvision")


def test_throughput_cli_writes_one_record_per_arm(tmp_path):
    out = tmp_path / "throughput.json"
    rc = main(["throughput", "--setting", "imagenet64", "--random-weights", "--size", "tiny", "--resolution", "8",
               "--updates", "2", "--warmup", "0", "--batch", "2", "--precision", "fp32",
               "--methods", "diff_instruct,disback", "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["kind"] == "throughput" and rec["device"] == "cpu"
    assert rec["settings"]["imagenet64"]["label_dim"] == 1000
    assert rec["settings"]["imagenet64"]["forward_flops_per_sample"] > 0
    arms = {a["method"]: a for a in rec["arms"]}
    assert set(arms) == {"diff_instruct", "disback"}
    for arm in arms.values():
        assert arm["status"] == "ok" and arm["stage2"]["timed_updates"] == 2 and arm["stage2"]["updates_per_s"] > 0
    assert arms["disback"]["stage1"]["path_nodes"] == 2 and arms["disback"]["switch_s"] >= 0
    assert "stage1" not in arms["diff_instruct"]
    assert arms["disback"]["nfe_per_update"] == arms["diff_instruct"]["nfe_per_update"] == 2 * 5


def test_sampling_throughput_times_one_step_against_the_teachers_sampler(tmp_path):
    """``--sampling-batch``: one-step samples/s against the teacher's EDM sampler (Heun 40 steps, NFE 79), same net."""
    rec = run_throughput(["ffhq64"], [], ["fp32"], {"ffhq64": 2}, 1, size="tiny", resolution=8, device="cpu",
                         sampling_batch=2, out=tmp_path / "t.json", log=lambda *_: None)
    (row,) = rec["sampling"]
    assert row["status"] == "ok" and row["teacher_nfe"] == row["nfe_ratio"] == 79 and row["sampler"] == "heun"
    assert row["onestep_samples_per_s"] > row["teacher_samples_per_s"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["sampling"][0]["batch"] == 2


def test_throughput_refuses_bad_choices_with_one_line(capsys, tmp_path):
    rc = main(["throughput", "--setting", "cifar10", "--random-weights", "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "setting='cifar10': must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="method='gan'"):
        arm_config("gan", 4)
    with pytest.raises(ValueError, match="precision='fp16'"):
        run_throughput(["ffhq64"], ["disback"], ["fp16"], {"ffhq64": 2}, 1, size="tiny")
    rc = main(["throughput", "--setting", "ffhq64,imagenet64", "--batch", "ffhq64=4", "--random-weights",
               "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "no batch for ['imagenet64']" in capsys.readouterr().err
    out = ["--random-weights", "--size", "tiny", "--out", str(tmp_path / "x.json")]
    for args, message in ((["--batch", "abc"], "--batch 'abc': must be an integer, or setting=integer pairs"),
                          (["--batch", "ffhq64=0", "--setting", "ffhq64"], "batches must be >= 1"),
                          (["--resolution", "7"], "resolution=7: the tiny networks need an even image size")):
        assert main(["throughput", *out, *args]) == 2 and message in capsys.readouterr().err
    for command, args, message in (("throughput", ["--updates", "0"], "--updates: must be an integer >= 1; got 0"),
                                   ("throughput", ["--warmup", "-1"], "--warmup: must be an integer >= 0; got -1"),
                                   ("throughput", ["--device", "tpu"], "--device: invalid choice: 'tpu'"),
                                   ("sd-throughput", ["--updates", "0"], "--updates: must be an integer >= 1"),
                                   ("sd-throughput", ["--batch", "x"], "--batch: must be an integer >= 1; got 'x'")):
        with pytest.raises(SystemExit) as exit_:  # argparse: usage and one error line, status 2, before any work
            main([command, *(out if command == "throughput" else []), *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_presets_are_the_released_teachers_sizes():
    """Parameter counts of the full-size networks (counted on the meta device): ~62M DDPM++, ~296M ADM."""
    for setting, expected in (("ffhq64", 61_805_571), ("imagenet64", 295_899_267)):
        from disback.networks import EDMDenoiser

        with torch.device("meta"):
            net = EDMDenoiser(**edm_teacher_kwargs(setting))
        assert sum(p.numel() for p in net.parameters()) == expected
    assert EDM_TEACHERS["imagenet64"]["model_type"] == "DhariwalUNet"
    tiny = random_edm_teacher("ffhq64", "tiny", resolution=8)
    assert tiny.data_shape == (3, 8, 8) and not any(p.requires_grad for p in tiny.parameters())
    assert forward_flops("ffhq64", "tiny", 8) < forward_flops("ffhq64", "tiny", 16)


def test_latents_follow_the_random_generators_device():
    """A CPU generator gives the same draws as before; the device of every draw is the generator's."""
    z, labels = draw_latents(3, (2,), 5, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(z, torch.randn((3, 2), generator=g)) and torch.equal(labels, torch.randint(5, (3,), generator=g))
    assert z.device.type == "cpu"


def test_throughput_module_imports_only_what_a_bare_gpu_machine_has():
    blocker = ("import sys\n"
               f"BLOCKED = {set(ABSENT_ON_GPU_MACHINE)!r}\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in BLOCKED:\n"
               "            raise ImportError('not on the GPU machine: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "import disback.__main__, disback.throughput\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_report_reads_the_throughput_files(tmp_path):
    """REPORT.md's GPU throughput table lists every measured arm and text-to-image row; the bench quotes a measured
    one-step/teacher-sampler ratio (full-size only) and keeps the other rows pending; GPU hours use the measurement."""
    from disback.bench import paper_sampling
    from disback.gpu_hours import seconds_per_pass, throughput_lines

    paper = tmp_path / "paper"
    rec = run_throughput(["ffhq64"], ["diff_instruct"], ["fp32"], {"ffhq64": 2}, 1, size="tiny", resolution=8,
                         device="cpu", sampling_batch=2, out=paper / "throughput_ffhq64.json", log=lambda *_: None)
    assert paper_sampling(tmp_path)[0]["status"].startswith("pending")  # a tiny net's speed is no paper measurement
    (paper / "throughput_ffhq64.json").write_text(json.dumps({**rec, "size": "full"}))
    (paper / "throughput_sd15.json").write_text(json.dumps({"device": "gpu", "size": "sd15", "rows": [
        {"precision": "bf16", "lora_rank": 64, "batch": 4, "updates_per_s": 1.5, "max_memory_allocated_gib": 20.0}]}))
    lines = "\n".join(throughput_lines(tmp_path))
    assert "| ffhq64 (SongUNet) | diff_instruct | fp32 | 2 |" in lines and "LoRA rank 64 | bf16 | 4 | 1.50 |" in lines
    ffhq, imagenet = paper_sampling(tmp_path)
    assert ffhq["throughput_ratio"] == rec["sampling"][0]["throughput_ratio"] and imagenet["status"].startswith("pending")
    for setting in ("ffhq64", "afhqv2_64"):  # AFHQv2's teacher is the same network: FFHQ's time per pass holds
        assert seconds_per_pass(setting, tmp_path)[1].startswith("measured")
    assert seconds_per_pass("imagenet64", tmp_path)[1].startswith("estimated")
