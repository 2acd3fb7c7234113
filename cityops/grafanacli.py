"""``cityops grafana``: the dashboards and alert rules Grafana provisions, built from code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from cityops import grafana
from cityops.terminal import fail, out

grafana_app = typer.Typer(
    help="Grafana: the dashboards and alert rules under config/grafana/, built from code.",
    no_args_is_help=True,
)


@grafana_app.command("build")
def build_command(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", help="Where to write (dashboards/, provisioning/alerting/).", file_okay=False
        ),
    ] = Path("config/grafana"),
    rules: Annotated[
        Path,
        typer.Option(help="The Prometheus alerting rules the Grafana alert rules are made from."),
    ] = Path("config/prometheus/alerts.yml"),
) -> None:
    """Write the six dashboards (JSON) and the Grafana alert rules (YAML).

    The same code gives the same bytes: the committed files under config/grafana/ are checked
    against a fresh build by the tests. Grafana provisions them with the datasources and
    notification policies beside them (config/grafana/provisioning/, docs/deploy.md).
    """
    try:
        written = grafana.build(out_dir, rules)
    except OSError as exc:
        fail(f"cannot build the Grafana files: {exc.strerror}: {exc.filename}", 2)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        fail(f"{rules} is not a Prometheus rules file: {exc.problem}{where}", 2)
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        fail(
            f"{rules} is not a Prometheus rules file: groups of name and rules, each rule with "
            f"alert and expr ({type(exc).__name__}: {exc})",
            2,
        )
    for path in written:
        out.print(str(path), highlight=False)
