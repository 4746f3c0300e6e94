"""`saliencekit check` command(s). (Not implemented yet.)"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's command(s) to ``subparsers``."""
