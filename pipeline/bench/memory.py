"""Peak memory of streaming scoring: score N images in a fresh process and report its peak RSS.

    python -m pipeline.bench.memory <detector_dir> <data_root> <n_images> <batch_size> <out_dir>

prints {"n_images": N, "peak_rss_mb": ...}. The test split is repeated to reach N images, so 10N
costs no extra data. Each measurement runs in its own process: a peak is a high-water mark and
would otherwise carry over from whatever ran before.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector
from pipeline.detector.files import score_files


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, MB. Linux: VmHWM of /proc/self/status, which
    belongs to the address space and starts afresh at exec; ru_maxrss survives exec and would report the
    (larger) parent that started this measurement process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux; other systems: best effort


def measure(detector_dir: Path, root: Path, n_images: int, batch_size: int, out_dir: Path) -> dict:
    """Run the child process and return its report."""
    command = [sys.executable, "-m", "pipeline.bench.memory", str(detector_dir), str(root), str(n_images),
               str(batch_size), str(out_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    detector_dir, root, n_images, batch_size, out_dir = argv
    detector = AnomalyDetector.load(detector_dir)
    test = scan_test(root)
    samples = [test[i % len(test)] for i in range(int(n_images))]
    before = peak_rss_mb()
    scored = score_files(detector, samples, Path(out_dir), int(batch_size))
    print(json.dumps({"n_images": len(samples), "n_scored": len(scored.frame), "n_errors": len(scored.errors),
                      "peak_rss_mb_before_scoring": before, "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
