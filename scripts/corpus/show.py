"""Print unlabelled raw rows compactly for reading: show.py RAW_FILE START COUNT [--source S] [--unlabelled]."""
import json, sys, glob
from pathlib import Path
raw, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src = sys.argv[sys.argv.index("--source") + 1] if "--source" in sys.argv else None
rows = [json.loads(l) for l in open(raw)]
if src:
    rows = [r for r in rows if r["source"].endswith(src)]
done = set()
for f in glob.glob(str(Path(__file__).parent / "labels" / "*.tsv")):
    done |= {l.split("\t")[0] for l in open(f) if l.strip()}
if "--unlabelled" in sys.argv:
    rows = [r for r in rows if r["id"] not in done]
for r in rows[start:start + count]:
    print(f"### {r['id']} [{r.get('image_label')}] Q: {r['prompt']}")
    print(r["response"].replace("\n", " / "))
