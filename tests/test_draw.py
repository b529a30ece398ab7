"""bp_jax.draw: the explained graph as DOT text and as .dot, .svg and .png files, written atomically."""

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import bp_jax
from bp_jax import documents, draw

PNG = b"\x89PNG\r\n\x1a\n"
NET = documents.TINY_NET


def tiny_net_graph():
    return bp_jax.explain(documents.tiny_net_loss, NET.params, NET.x, NET.t)


def test_dot_declares_every_node_and_edge():
    graph = bp_jax.explain(lambda w: w * w + w, 3.0)
    dot = draw.to_dot(graph)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert all(f"n{node.index} [label=<" in dot for node in graph.nodes)
    assert dot.count("->") == 3  # w -> w·w (once, though used twice), w·w -> sum, w -> sum
    assert "value 12" in dot and "grad 7" in dot


@pytest.mark.slow
def test_layout_puts_every_node_after_its_inputs():
    model = bp_jax.mlp((10, 8, 6, 1), "tanh")
    graph = bp_jax.explain(bp_jax.loss_fn(model), model.init(jax.random.key(0)), jnp.ones((2, 10)), jnp.ones((2, 1)))
    column = draw.columns(graph)
    assert all(column[source.index] < column[node.index] for node in graph.nodes for source in node.inputs)
    assert column[graph.output.index] == max(column)
    rows = draw.rows(graph, column)
    cells = {(column[i], rows[i]) for i in range(len(graph.nodes))}
    assert len(cells) == len(graph.nodes)  # no two boxes in the same place


def test_save_writes_dot_svg_and_png(tmp_path):
    graph = tiny_net_graph()
    assert draw.save(graph, tmp_path / "g.dot").read_text(encoding="utf-8") == draw.to_dot(graph)
    assert draw.save(graph, tmp_path / "g.png", engine="matplotlib").read_bytes()[:8] == PNG
    svg = ElementTree.parse(draw.save(graph, tmp_path / "g.svg", engine="matplotlib")).getroot()
    assert svg.tag.endswith("svg")
    with pytest.raises(ValueError, match=r"ending in .dot, .svg or .png, got 'g.jpg'"):
        draw.save(graph, tmp_path / "g.jpg")
    with pytest.raises(ValueError, match="engine None or one of"):
        draw.save(graph, tmp_path / "g.png", engine="tikz")


def test_save_with_graphviz_where_it_is_installed(tmp_path):
    graph = tiny_net_graph()
    if draw.shutil.which("dot") is None:
        with pytest.raises(FileNotFoundError, match="dot program is not on PATH"):
            draw.save(graph, tmp_path / "g.png", engine="graphviz")
        pytest.skip("Graphviz's dot is not installed: the matplotlib drawing is tested instead")
    assert draw.save(graph, tmp_path / "g.png", engine="graphviz").read_bytes()[:8] == PNG
    assert ElementTree.parse(draw.save(graph, tmp_path / "g.svg", engine="graphviz")).getroot().tag.endswith("svg")


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    graph, target = tiny_net_graph(), tmp_path / "graph.svg"
    target.write_text("the previous picture", encoding="utf-8")

    def disk_full(figure, path, **kwargs):
        Path(path).write_bytes(b"<svg trunc")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", disk_full)
    with pytest.raises(OSError, match="No space left"):
        draw.save(graph, target, engine="matplotlib")
    assert target.read_text(encoding="utf-8") == "the previous picture"
    assert os.listdir(tmp_path) == ["graph.svg"]


@pytest.mark.parametrize("name", ["g.dot", "g.svg"])
def test_a_save_that_cannot_write_names_the_path_given_not_a_temporary_file(tmp_path, name):
    graph = bp_jax.explain(lambda w: w * w, 2.0)
    (tmp_path / "file").write_text("a file, not a folder")
    for folder, error in (("missing/dir", FileNotFoundError), ("file", NotADirectoryError)):
        target = f"{tmp_path}/{folder}/{name}"
        with pytest.raises(error) as raised:
            draw.save(graph, target, engine="matplotlib")
        assert raised.value.filename == target and str(raised.value).endswith(f": '{target}'")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_graph_holding_prng_keys_draws_their_key_data(tmp_path):
    graph = bp_jax.explain(lambda x, key: x * jax.random.uniform(key), 2.0, jax.random.key(3))
    dot = draw.to_dot(graph)
    assert "key[]" in dot and "value 0 3" in dot
    assert draw.save(graph, tmp_path / "g.png", engine="matplotlib").read_bytes()[:8] == PNG


def test_the_engine_knows_nothing_of_drawing():
    import subprocess
    import sys

    code = (
        "import sys, bp_jax; bp_jax.explain(lambda w: w * w, 2.0).table(); "
        "print(sorted(m for m in sys.modules if m in ('bp_jax.draw', 'matplotlib') or m.startswith('bp_jax._render')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
    assert not hasattr(bp_jax.Graph, "to_dot") and not hasattr(bp_jax.Graph, "save")
