#!/usr/bin/env bash
# Makes the committed test utterances in tests/data/ with espeak-ng and sox:
# 16 kHz mono 16-bit WAV, 0.3 s of silence before the speech, none after.
# The texts are in tests/data/utterances.json. Re-run after changing a text:
#   scripts/make_test_audio.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/data
command -v espeak-ng >/dev/null || { echo "needs espeak-ng (apt-get install espeak-ng)" >&2; exit 1; }
command -v sox >/dev/null || { echo "needs sox (apt-get install sox)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# name|voice|words per minute|text
cat > "$tmp/list" <<'LIST'
weather|en-us|160|What is the weather like in Paris today?
joke|en-gb|150|Please tell me a joke about computers.
train|en-us+m3|170|What time does the next train to Boston leave?
name|en-us+f3|155|My name is Alice and I live in London.
stop|en-us|175|Wait, stop, I meant Tuesday.
capital|en-us+f3|145|What is the capital of France?
clock|en-gb|150|What time is it right now?
LIST
while IFS='|' read -r name voice speed text; do
  [ -z "$name" ] && continue
  espeak-ng -v "$voice" -s "$speed" -w "$tmp/$name.wav" "$text"
  sox "$tmp/$name.wav" -r 16000 -c 1 -b 16 "$tmp/$name.16k.wav"
  sox "$tmp/$name.16k.wav" "$out/$name.wav" pad 0.3 0 reverse silence 1 0.01 0.1% reverse
  echo "$out/$name.wav: $text"
done < "$tmp/list"

python3 - "$out" "$tmp/list" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
texts = {}
for line in pathlib.Path(sys.argv[2]).read_text().splitlines():
    if "|" in line:
        name, voice, speed, text = line.split("|", 3)
        texts[name] = {"file": f"{name}.wav", "voice": voice, "wpm": int(speed), "text": text}
(out / "utterances.json").write_text(json.dumps(texts, indent=2) + "\n")
PY
