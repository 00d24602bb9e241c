"""md4_jax line counts (issue 14: the package gets shorter), at any commits, with what issues 15-18 contributed.

  python benchmarks/line_counts.py [REV ...]      # default: 2b81b89 1eb50dc HEAD

A commit's total is `find md4_jax -name '*.py' | xargs cat | wc -l` at that commit. Issues 15-18 were built beside
issue 14 and merged with it; their lines are every line of the files they created plus, in the other files, the
lines `git blame` gives to their commits (those of the merged branches i15 / i16 / i17, and issue 18's commits on
main before issue 14's merge). Run from a clone with the full history.
"""
import subprocess
import sys

BEFORE_ISSUE_14 = "2b81b89"
MERGES = {"i15": "deff091", "i16": "e964f54", "i17": "017067e"}  # merge commits: their second parent is the branch
ISSUE_18_END = "dbee869^1"  # main just before issue 14's merge: issue 18 was committed there
CREATED = ("md4_jax/training/workdir_lock.py", "md4_jax/training/preflight.py", "md4_jax/training/stderr_filter.py",
           "md4_jax/sweep.py", "md4_jax/sweeps/", "md4_jax/nn/mdlm_dit.py", "md4_jax/mdlm_weights.py",
           "md4_jax/convert.py")


def git(*args: str) -> str:
  return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def feature_commits() -> set[str]:
  commits = set()
  for merge in MERGES.values():
    commits.update(git("rev-list", f"{BEFORE_ISSUE_14}..{merge}^2").split())
  commits.update(git("rev-list", "--first-parent", f"{BEFORE_ISSUE_14}..{ISSUE_18_END}").split())
  return commits


def counts(rev: str, features: set[str]) -> tuple[int, int]:
  """(md4_jax lines, of which issues 15-18's) at `rev`."""
  total = feature = 0
  for path in git("ls-tree", "-r", "--name-only", rev, "md4_jax").split():
    if not path.endswith(".py"):
      continue
    lines = len(git("show", f"{rev}:{path}").splitlines())
    total += lines
    if path.startswith(CREATED):
      feature += lines
      continue
    for line in git("blame", "--line-porcelain", rev, "--", path).splitlines():
      sha = line[:40]
      if len(line) > 41 and line[40] == " " and sha in features:
        feature += 1
  return total, feature


def main() -> None:
  features = feature_commits()
  print("| commit | md4_jax lines | of which issues 15-18 | the rest |\n|---|---|---|---|")
  for rev in sys.argv[1:] or [BEFORE_ISSUE_14, "1eb50dc", "HEAD"]:
    total, feature = counts(rev, features)
    print(f"| {git('rev-parse', '--short', rev).strip()} | {total} | {feature} | {total - feature} |")


if __name__ == "__main__":
  main()
