"""Pictures of an explained graph: `to_dot(graph)` (Graphviz DOT text) and `save(graph, path, engine=None)`
(.dot, .svg or .png by suffix).

    import bp_jax.draw
    bp_jax.draw.save(bp_jax.explain(f, *args), "graph.png")

The edge that draws: the engine (`bp_jax._explain`) knows nothing of colours, DOT or files; this module imports
it, writes files (atomically: a temporary file beside the target, then a rename), runs Graphviz's `dot` where it
is installed and imports matplotlib otherwise, so `import bp_jax` does neither. Each node is a box: name, index
and op, its value in blue (forward pass), its gradient in red (backward pass), and where the graph has tangents
(`explain(..., tangents=...)`) its tangent in purple (forward mode). Without `dot`, matplotlib draws a
layered layout left to right: each node one column before its first consumer, each column ordered by its
neighbours' mean row.
"""

import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from bp_jax._explain import Graph, Node, summary

ENGINES = ("graphviz", "matplotlib")
VALUE_COLOR, GRAD_COLOR, TANGENT_COLOR = "#1f5fbf", "#c0392b", "#7d3c98"
LEGEND = (
    ("value: forward pass", VALUE_COLOR),
    ("grad = ∂f/∂node: backward pass", GRAD_COLOR),
    ("tangent = ∂node along the inputs' direction: forward mode", TANGENT_COLOR),
)
NODE_FILL = {"input": "#e3f1e3", "const": "#eeeeee", "output": "#fff2c6", "op": "#ffffff"}
_FONT_SIZE = 8.0  # points; the layout's unit is the point
_CHAR, _LINE = 0.62 * _FONT_SIZE, 1.45 * _FONT_SIZE
_PAD, _COLUMN_GAP, _ROW_GAP = 6.0, 44.0, 16.0


def legend_lines(graph: Graph) -> tuple[tuple[str, str], ...]:
    """(text, colour) of each line the legend shows: value and grad, and tangent where the graph has them.

    Args:
      graph: an explained graph.

    Returns:
      The legend's lines, each (text, colour as "#rrggbb").

    Examples:
      >>> from bp_jax import explain, draw
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> [text for text, colour in draw.legend_lines(graph)]
      ['value: forward pass', 'grad = ∂f/∂node: backward pass']
    """
    return LEGEND if graph.has_tangents else LEGEND[:2]


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text of the graph: a box per node, an edge from each operand to its result.

    Each box shows the node's name, index and op, its value (blue, forward) and grad (red, backward), and its
    tangent (purple, forward mode) where the graph has tangents.

    Args:
      graph: an explained graph.

    Returns:
      The DOT text, ending in a newline.

    Examples:
      >>> from bp_jax import explain, draw
      >>> dot = draw.to_dot(explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0))
      >>> print(dot[:17])
      digraph explain {
      >>> [line for line in dot.splitlines() if "->" in line]
      ['  n0 -> n2;', '  n1 -> n2;', '  n2 -> n3;', '  n3 -> n4;']
    """
    lines = [
        "digraph explain {",
        '  rankdir=LR; fontname="Helvetica";',
        '  node [shape=plaintext, margin=0, fontname="Helvetica"];',
        '  edge [color="#888888", arrowsize=0.7];',
        "  label=<"
        + "     ".join(f'<font color="{colour}">{text}</font>' for text, colour in legend_lines(graph))
        + ">;",
        "  labelloc=t;",
    ]
    for node in graph.nodes:
        lines.append(f"  n{node.index} [label=<{_dot_label(node, graph)}>];")
    for node in graph.nodes:
        lines += [f"  n{source.index} -> n{node.index};" for source in dict.fromkeys(node.inputs)]
    return "\n".join([*lines, "}", ""])


def save(graph: Graph, path, engine: str | None = None) -> Path:
    """Write `graph` to `path` by its suffix (.dot, .svg or .png), atomically.

    Pictures are drawn by Graphviz's `dot` where it is installed, else by matplotlib. The file appears whole
    or not at all: it is written beside the target, then renamed.

    Args:
      graph: an explained graph.
      path (str | os.PathLike): where to write; its suffix picks the format.
      engine: None (Graphviz where installed, else matplotlib), or "graphviz" or "matplotlib" to force one.

    Returns:
      (pathlib.Path): the path written.

    Raises:
      ValueError: a suffix other than .dot, .svg and .png, or an unknown engine.
      FileNotFoundError: engine "graphviz" for a picture where Graphviz's `dot` is not on PATH.
      OSError: the file cannot be written (its folder is missing, say); it names `path`, never the temporary file.

    Examples:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from bp_jax import explain, draw
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> with tempfile.TemporaryDirectory() as folder:
      ...     path = draw.save(graph, Path(folder) / "graph.dot")
      ...     print(path.name, path.read_text().count("->"))
      graph.dot 4
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".dot", ".svg", ".png"):
        raise ValueError(f"save expects a path ending in .dot, .svg or .png, got {path.name!r}")
    if engine not in (None, *ENGINES):
        raise ValueError(f"save expects engine None or one of {ENGINES}, got {engine!r}")
    dot = shutil.which("dot")
    if suffix != ".dot" and engine == "graphviz" and dot is None:
        raise FileNotFoundError("Graphviz's dot program is not on PATH; install Graphviz or use engine='matplotlib'")
    with _atomic(path) as partial:
        if suffix == ".dot":
            partial.write_text(to_dot(graph), encoding="utf-8")
        elif dot is not None and engine != "matplotlib":
            subprocess.run(
                [dot, f"-T{suffix[1:]}", "-o", str(partial)],
                input=to_dot(graph),
                text=True,
                check=True,
                capture_output=True,
            )
        else:
            _draw(graph).savefig(partial, dpi=150, format=suffix[1:])
    return path


class _atomic:
    """`with _atomic(path) as partial:` write `partial`; on success it replaces `path` in one rename, on
    failure it is removed and `path` is untouched. An OSError names `path`, not `partial`."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        try:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent)
        except OSError as err:
            raise self._naming_path(err) from None
        os.close(handle)
        self.partial = Path(name)
        return self.partial

    def __exit__(self, kind, error, traceback):
        if kind is None:
            try:
                os.replace(self.partial, self.path)
            except OSError as err:
                self.partial.unlink(missing_ok=True)
                raise self._naming_path(err) from None
            return False
        self.partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise self._naming_path(error) from None
        return False

    def _naming_path(self, err: OSError) -> OSError:
        """`err` (of its own class) about the file the caller named."""
        return type(err)(err.errno, err.strerror or str(err), str(self.path))


def node_kind(node: Node, output: Node) -> str:
    """input, const, output or op: what a picture colours a node by.

    Args:
      node: a node of the graph.
      output: the graph's output node.

    Returns:
      "output" for the output node, "input" or "const" for those nodes, "op" for any other.

    Examples:
      >>> from bp_jax import explain, draw
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> [draw.node_kind(node, graph.output) for node in graph.nodes]
      ['input', 'input', 'op', 'op', 'output']
    """
    return "output" if node is output else node.op if node.op in ("input", "const") else "op"


def box_lines(node: Node, tangents: bool = False) -> list[str]:
    """The lines of a node's box: name; index, op and type; value; grad; with `tangents`, tangent.

    Args:
      node: a node of an explained graph.
      tangents: whether to add the tangent's line (for a graph with tangents).

    Returns:
      The box's lines, top to bottom; a tensor's type shows as dtype[shape], its numbers as the first few.

    Examples:
      >>> from bp_jax import explain, draw
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0, tangents=(1.0, None))
      >>> draw.box_lines(graph.nodes[2], tangents=True)
      ['w·x', '#2 mul', 'value 1', 'grad -4', 'tangent 2']
    """
    kind, value = summary(node.value)
    return [
        node.name,
        f"#{node.index} {node.op}{'  ' + kind if kind else ''}",
        f"value {value}",
        f"grad {summary(node.grad)[1]}",
        *([f"tangent {summary(node.tangent)[1]}"] if tangents else []),
    ]


def _dot_label(node: Node, graph: Graph) -> str:
    """A node's HTML-like DOT label: name, op, value in blue, grad in red, tangent in purple."""
    escape = lambda text: text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    name, op, *numbers = map(escape, box_lines(node, graph.has_tangents))
    coloured = "".join(
        f'<tr><td><font color="{colour}">{text}</font></td></tr>'
        for text, (_, colour) in zip(numbers, legend_lines(graph))
    )
    return (
        f'<table border="1" cellborder="0" cellspacing="0" cellpadding="3" '
        f'bgcolor="{NODE_FILL[node_kind(node, graph.output)]}">'
        f"<tr><td><b>{name}</b></td></tr>"
        f'<tr><td><font point-size="9" color="#777777">{op}</font></td></tr>'
        f"{coloured}</table>"
    )


def columns(graph: Graph) -> list[int]:
    """Each node's column in a left-to-right layout: one before its first consumer's.

    A node nothing consumes (f) sits at its depth, the longest path to it from an input; columns start at 0.

    Args:
      graph: an explained graph.

    Returns:
      One column per node, in the order of `graph.nodes`.

    Examples:
      >>> from bp_jax import explain, draw
      >>> draw.columns(explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0))
      [0, 0, 1, 2, 3]
    """
    depth: list[int] = []
    consumers: defaultdict[int, list[int]] = defaultdict(list)
    for node in graph.nodes:
        depth.append(1 + max((depth[source.index] for source in node.inputs), default=-1))
        for source in node.inputs:
            consumers[source.index].append(node.index)
    column = [0] * len(graph.nodes)
    for node in reversed(graph.nodes):
        used_by = consumers[node.index]
        column[node.index] = min(column[i] for i in used_by) - 1 if used_by else depth[node.index]
    first = min(column, default=0)
    return [c - first for c in column]


def rows(graph: Graph, column: list[int], sweeps: int = 4) -> list[float]:
    """Each node's row in its column, centred on 0, by the barycenter heuristic.

    A few sweeps, alternately left to right (ordering each column by the mean row of the node's inputs) and
    right to left (of its consumers).

    Args:
      graph: an explained graph.
      column: each node's column, as `columns(graph)` gives them.
      sweeps: how many sweeps to make.

    Returns:
      One row per node, in the order of `graph.nodes`; a column of k nodes holds rows −(k − 1)/2 … (k − 1)/2.

    Examples:
      >>> from bp_jax import explain, draw
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> draw.rows(graph, draw.columns(graph))
      [-0.5, 0.5, 0.0, 0.0, 0.0]
    """
    members = defaultdict(list)
    for node in graph.nodes:
        members[column[node.index]].append(node.index)
    inputs = {node.index: [source.index for source in dict.fromkeys(node.inputs)] for node in graph.nodes}
    consumers = defaultdict(list)
    for index, sources in inputs.items():
        for source in sources:
            consumers[source].append(index)
    row = [0.0] * len(graph.nodes)

    def place(indices):
        for rank, index in enumerate(indices):
            row[index] = rank - (len(indices) - 1) / 2

    def mean(index, neighbours):
        return sum(row[j] for j in neighbours[index]) / len(neighbours[index]) if neighbours[index] else row[index]

    for indices in members.values():
        place(indices)
    for sweep in range(sweeps):
        order, neighbours = (sorted(members), inputs) if sweep % 2 == 0 else (sorted(members, reverse=True), consumers)
        for c in order:
            members[c].sort(key=lambda index: mean(index, neighbours))
            place(members[c])
    return row


def _lines(node: Node, graph: Graph) -> list[tuple[str, str, str]]:
    """(text, colour, weight) of each line in a node's box."""
    name, op, *numbers = box_lines(node, graph.has_tangents)
    return [
        (name, "black", "bold"),
        (op, "#777777", "normal"),
        *((text, colour, "normal") for text, (_, colour) in zip(numbers, legend_lines(graph))),
    ]


def _draw(graph: Graph):
    """A matplotlib Figure of the graph (no pyplot: no global state)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    column = columns(graph)
    row = rows(graph, column)
    lines = [_lines(node, graph) for node in graph.nodes]
    width = [max(len(text) for text, _, _ in node_lines) * _CHAR + 2 * _PAD for node_lines in lines]
    height = len(lines[0]) * _LINE + 2 * _PAD
    column_width: defaultdict[int, float] = defaultdict(float)
    for index, c in enumerate(column):
        column_width[c] = max(column_width[c], width[index])
    left, total_width = {}, 0.0
    for c in range(max(column) + 1):
        left[c] = total_width + _COLUMN_GAP / 2
        total_width += column_width.get(c, 0.0) + _COLUMN_GAP
    span = max(row, default=0) - min(row, default=0)
    legend = 2.5 * _LINE
    total_height = (span + 1) * (height + _ROW_GAP) + legend
    centre_y = lambda index: (row[index] - min(row) + 0.5) * (height + _ROW_GAP)
    centre_x = lambda index: left[column[index]] + column_width[column[index]] / 2

    figure = Figure(figsize=(total_width / 72, total_height / 72))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    axes.set_xlim(0, total_width)
    axes.set_ylim(total_height, 0)  # rows go down
    for node in graph.nodes:
        x, y, w = centre_x(node.index), centre_y(node.index) + legend, width[node.index]
        axes.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - height / 2),
                w,
                height,
                boxstyle="round,pad=0,rounding_size=4",
                facecolor=NODE_FILL[node_kind(node, graph.output)],
                edgecolor="#555555",
                linewidth=0.8,
                zorder=2,
            )
        )
        for k, (text, colour, weight) in enumerate(lines[node.index]):
            axes.text(
                x,
                y - height / 2 + _PAD + (k + 0.5) * _LINE,
                text,
                ha="center",
                va="center",
                color=colour,
                fontsize=_FONT_SIZE,
                family="DejaVu Sans Mono",
                weight=weight,
                zorder=3,
            )
        for source in dict.fromkeys(node.inputs):
            start = (centre_x(source.index) + width[source.index] / 2, centre_y(source.index) + legend)
            axes.add_patch(
                FancyArrowPatch(
                    start,
                    (x - w / 2, y),
                    arrowstyle="-|>",
                    mutation_scale=9,
                    color="#888888",
                    linewidth=0.8,
                    shrinkA=0,
                    shrinkB=1,
                    zorder=1,
                )
            )
    x = _COLUMN_GAP / 2
    for text, colour in legend_lines(graph):
        axes.text(x, legend / 2, text, color=colour, fontsize=_FONT_SIZE + 1, va="center", family="DejaVu Sans Mono")
        x += (len(text) + 5) * _CHAR * (_FONT_SIZE + 1) / _FONT_SIZE
    return figure
