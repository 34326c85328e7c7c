"""engine.blend and `python -m engine blend`: two networks blended at a resolution split, and snapshots averaged."""

import torch

from engine.__main__ import main
from engine.checkpoint import load_network
from test_export import _reference_ops, save_G, tiny_G  # noqa: F401 (the autouse fixture is used by name)


def test_blend_takes_low_resolutions_from_a_and_high_from_b(tmp_path, capsys):
    Ga, Gb = tiny_G(seed=1), tiny_G(seed=2)
    a, b = save_G(Ga, tmp_path / "a.pt"), save_G(Gb, tmp_path / "b.pt")
    out = tmp_path / "blend.pt"
    assert main(["blend", "--a", str(a), "--b", str(b), "--split", "8", "--out", str(out)]) == 0
    assert "blocks 4-8 from" in capsys.readouterr().out
    G = load_network(out)["G_ema"].state_dict()
    sa, sb = Ga.state_dict(), Gb.state_dict()
    for name, value in G.items():
        src = sb if name.startswith("synthesis.b16.") else sa
        assert torch.equal(value, src[name]), name
    assert torch.equal(G["mapping.w_avg"], sa["mapping.w_avg"])
    out_b = tmp_path / "blend_b.pt"
    assert main(["blend", "--a", str(a), "--b", str(b), "--split", "4", "--mapping", "b", "--out", str(out_b)]) == 0
    G = load_network(out_b)["G_ema"].state_dict()
    assert torch.equal(G["mapping.fc0.weight"], sb["mapping.fc0.weight"])
    assert torch.equal(G["synthesis.b4.conv1.weight"], sa["synthesis.b4.conv1.weight"])
    assert torch.equal(G["synthesis.b8.conv1.weight"], sb["synthesis.b8.conv1.weight"])


def test_blend_refuses_different_architectures_and_bad_splits(tmp_path, capsys):
    a = save_G(tiny_G(seed=1), tmp_path / "a.pt")
    other = save_G(tiny_G(seed=1, channel_base=64), tmp_path / "other.pt")
    small = save_G(tiny_G(seed=1, res=8, channel_base=64), tmp_path / "small.pt")
    out = tmp_path / "o.pt"
    assert main(["blend", "--a", str(a), "--b", str(other), "--split", "8", "--out", str(out)]) == 2
    assert "not the same architecture" in capsys.readouterr().err
    assert main(["blend", "--a", str(a), "--b", str(small), "--split", "4", "--out", str(out)]) == 2
    assert "img_resolution 16 vs 8" in capsys.readouterr().err
    assert main(["blend", "--a", str(a), "--b", str(a), "--split", "16", "--out", str(out)]) == 2
    assert "use one of 4, 8" in capsys.readouterr().err
    assert main(["blend", "--a", str(a), "--split", "8", "--out", str(out)]) == 2
    assert "needs --b" in capsys.readouterr().err
    assert main(["blend", "--average", str(a), str(a), "--a", str(a), "--out", str(out)]) == 2
    assert "does not combine" in capsys.readouterr().err
    assert not out.exists()


def test_average_is_the_mean_of_the_snapshots(tmp_path, capsys):
    Gs = [tiny_G(seed=s) for s in (1, 2, 3)]
    paths = [str(save_G(G, tmp_path / f"s{i}.pt")) for i, G in enumerate(Gs)]
    out = tmp_path / "avg.pt"
    assert main(["blend", "--average", *paths, "--out", str(out)]) == 0
    assert "average of 3 networks" in capsys.readouterr().out
    G = load_network(out)["G_ema"].state_dict()
    for name, value in G.items():
        want = sum(g.state_dict()[name].double() for g in Gs) / 3
        torch.testing.assert_close(value.double(), want, rtol=0, atol=1e-6)
    assert main(["blend", "--average", paths[0], paths[1], "--out", str(out)]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["blend", "--average", paths[0], "--out", str(tmp_path / "one.pt")]) == 2
    assert "at least two" in capsys.readouterr().err
