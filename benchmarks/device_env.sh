# Source from the repository root on the GPU machine: makes the checkout importable as `bitlower`
# without pip (the machine's `pip install -e .` left `bitlower.passes` unimportable, session 6).
# Links bitlower/{passes,codegen,runtime,models} to the top-level folders (git-ignored).
for part in passes codegen runtime models; do ln -sfn ../$part bitlower/$part; done
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
