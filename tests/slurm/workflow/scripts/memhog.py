"""Hold `mb` MiB of touched memory for a few seconds; usage: memhog.py MB MEM_MB_GRANTED."""

import sys
import time

mb, granted = int(sys.argv[1]), int(sys.argv[2])
chunks = [bytearray(b"\x01") * (64 * 2**20) for _ in range(mb // 64)]  # written, so resident
time.sleep(5)  # stay above the limit for several accounting polls (JobAcctGatherFrequency=1)
print(f"held {len(chunks) * 64} MiB with mem_mb={granted}")
