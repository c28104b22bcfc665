"""The files `reconciler init` writes into a new definitions repository, as
package data (read with importlib.resources by reconciler/scaffold.py).

Each is the file as written but for its markers: `__name__` words that
scaffold.py fills in (the organization, the admins team, the release), and the
comment line `# @install@` in the workflows, replaced by an install step
(install-release.yml, or install-source.yml in this project's own repository).
Every marker sits where the YAML stays valid, so the templates are checked as
they are (tests/unit/test_resources.py). Names carry no leading dot, so that git
and GitHub do not take `gitignore` or the workflows for this package's own.
"""
