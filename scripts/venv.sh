# Sourced by scripts/test.sh and scripts/package.sh: the pinned Python tools
# (moto, the Triton client, cfn-lint, the SAM CLI, cargo-lambda with zig, the
# Prometheus parser) in .venv, reinstalled when the requirements file changes.
if ! cmp -s scripts/requirements-test.txt .venv/.requirements-test.txt 2>/dev/null; then
  echo "== installing test and packaging tools into .venv (scripts/requirements-test.txt)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt .venv/.requirements-test.txt
fi
