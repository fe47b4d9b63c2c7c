"""Shared fixtures. Each area keeps its own plugin module under tests/plugins/."""

pytest_plugins = ["tests.plugins.pki", "tests.plugins.agent", "tests.plugins.mariadb", "tests.plugins.disk"]
