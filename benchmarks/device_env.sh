# Source from the repository root on the GPU machine: makes the checkout importable as `bitlower`
# without pip (the machine's `pip install -e .` left `bitlower.passes` unimportable, session 6).
# Links bitlower/{passes,codegen,runtime,models} to the top-level folders (git-ignored), and installs
# carried wheels from .whl/ (e.g. sageattention 1.0.6 for the benchmark's SageAttention row:
# `pip download --no-deps sageattention==1.0.6 -d .whl` here, then `carry: [".whl"]`).
for part in passes codegen runtime models; do ln -sfn ../$part bitlower/$part; done
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PWD:/tmp/site
fi
