#!/usr/bin/env python3
"""Write tests/fixtures/world_tokenizer.json from the official RWKV World tokenizer.

Runs TRIE_TOKENIZER from the `rwkv` PyPI package (Apache-2.0) on a list of tricky inputs
and records, for each, the input bytes and the official token ids. tests/tokenizer.rs checks
that our World tokenizer gives the same ids.

Run from the repository root, with a Python that has the `rwkv` package (torch not needed,
only rwkv.rwkv_tokenizer is imported):

    pip install rwkv            # or use an existing venv, e.g. /work/venv/ref
    python scripts/make_tokenizer_fixtures.py

If `import rwkv.rwkv_tokenizer` fails, point RWKV_PKG_DIR at a directory that contains an
unpacked `rwkv/` package (the one holding rwkv_tokenizer.py and rwkv_vocab_v20230424.txt):

    RWKV_PKG_DIR=/tmp/rwkvpkg python scripts/make_tokenizer_fixtures.py

Output: a JSON list of {"name": str, "hex": input bytes as hex, "ids": [int, ...]}.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "world_tokenizer.json")


def load_tokenizer():
    try:
        import rwkv.rwkv_tokenizer as mod
    except ImportError:
        sys.path.insert(0, os.environ.get("RWKV_PKG_DIR", "/tmp/rwkvpkg"))
        import rwkv.rwkv_tokenizer as mod
    vocab = os.path.join(os.path.dirname(mod.__file__), "rwkv_vocab_v20230424.txt")
    return mod.TRIE_TOKENIZER(vocab)


def text_cases():
    """(name, str) pairs, encoded as UTF-8."""
    return [
        ("empty", ""),
        ("ascii_sentence", "Hello world! The quick brown fox jumps over the lazy dog."),
        ("single_char", "a"),
        ("leading_space_words", " the cat sat on the mat"),
        ("punctuation", "Well... isn't it \"odd\"? (yes) [no] {maybe}; a-b_c/d\\e|f~g"),
        ("accented_latin", "Café naïve façade résumé Ångström Øre Straße"),
        ("greek_cyrillic", "Ελληνικά και русский язык, Україна"),
        ("cjk_chinese", "中文分词测试：我爱北京天安门，天安门上太阳升。"),
        ("cjk_japanese", "日本語のテキストです。カタカナとひらがな、漢字。"),
        ("korean", "한국어 텍스트 토큰화 테스트입니다."),
        ("arabic", "مرحبا بالعالم، هذا اختبار للنص العربي."),
        ("hebrew", "שלום עולם"),
        ("hindi", "नमस्ते दुनिया, यह एक परीक्षण है।"),
        ("thai", "สวัสดีชาวโลก"),
        ("combining_marks", "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353\u0354 o\u0336\u0336"),
        ("emoji_basic", "I love 🍕 and 🐍! 😀😃😄😁"),
        ("emoji_zwj_family", "family: 👨\u200d👩\u200d👧\u200d👦 and 🏳️\u200d🌈"),
        ("emoji_skin_tone", "👍🏻👍🏼👍🏽👍🏾👍🏿"),
        ("emoji_flags", "🇺🇸🇯🇵🇫🇷🇩🇪🇨🇳"),
        ("emoji_keycap_variation", "1\ufe0f\u20e3 #\ufe0f\u20e3 ❤\ufe0f ☺\ufe0e"),
        ("supplementary_plane", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 𠜎𠜱𡃁"),
        ("zero_width_and_nbsp", "a\u200bb\u200cc\u200dd\u00a0e\u2002f\u3000g\ufeffh"),
        ("spaces_run", "a" + " " * 37 + "b"),
        ("spaces_long", " " * 300),
        ("tabs_run", "\t\t\tx\t\t\t\t\ty\t"),
        ("newlines", "line1\nline2\n\nline4\n\n\n\nend\n"),
        ("crlf", "line1\r\nline2\r\n\r\nline4\r\n"),
        ("mixed_whitespace", " \t \n \r\n\t\t  \n   \x0b\x0c"),
        ("repeated_a", "a" * 500),
        ("repeated_hash", "#" * 200),
        ("repeated_dash", "-" * 170 + "=" * 90),
        ("repeated_cjk", "哈" * 60),
        ("digits", "0123456789 3.14159265358979 1,000,000 2024-01-15 0x1F 1e-10"),
        ("long_number", "12345678901234567890123456789012345678901234567890"),
        (
            "python_code",
            "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
            "print([fib(i) for i in range(10)])  # comment\n",
        ),
        (
            "rust_code",
            "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
            '\tprintln!("{:?}", v);\n}\n',
        ),
        ("html", '<div class="x"><a href="https://example.com/?q=1&r=2">link</a></div>'),
        ("json", '{"key": [1, 2, {"nested": null}], "s": "\\u00e9\\n"}'),
        ("chat_format", "User: hi\n\nAssistant: Hello! How can I help?\n\nUser:"),
        ("control_chars", "".join(chr(c) for c in range(0, 32)) + "\x7f"),
        ("latin1_range", "".join(chr(c) for c in range(0xA0, 0x100))),
        ("c1_controls", "".join(chr(c) for c in range(0x80, 0xA0))),
        ("private_use_and_max", "\ue000\uf8ff\U000f0000\U0010ffff"),
        ("replacement_char", "bad \ufffd char"),
        ("mixed_scripts", "Hello 世界 مرحبا мир 🌍 שלום नमस्ते"),
        ("backslashes_quotes", "\\\\ \\n \\' \" ' ''' \"\"\" \\x41"),
        ("math_symbols", "∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≤ ∞, √2 ≈ 1.414, α→β"),
    ]


def byte_cases():
    """(name, bytes) pairs: invalid UTF-8 and byte-literal tokens."""
    return [
        ("invalid_lone_continuation", b"abc\x80def"),
        ("invalid_lone_lead", b"\xe4 space \xc3"),
        ("invalid_truncated_cjk", "中文".encode("utf-8")[:-1]),
        ("invalid_split_emoji", "😀".encode("utf-8")[:2] + b"x" + "😀".encode("utf-8")[2:]),
        ("invalid_ff_fe", b"\xff\xfe\xfd\xfc hello \xc0\xc1\xf5\xf8"),
        ("invalid_surrogate_encoding", b"\xed\xa0\x80\xed\xbf\xbf"),
        ("invalid_overlong", b"\xc0\xaf\xe0\x80\xaf\xf0\x80\x80\xaf"),
        ("all_bytes", bytes(range(256))),
        ("all_bytes_reversed", bytes(range(255, -1, -1))),
        ("high_bytes_run", bytes([0x80 + (i * 7) % 128 for i in range(64)])),
        ("utf16le_text", "Hi 世界".encode("utf-16-le")),
        ("nul_bytes", b"\x00\x00a\x00\x00\x00b"),
    ]


def byte_literal_token_cases(tok):
    """Inputs that hit tokens written as bytes literals (partial UTF-8 sequences)."""
    multi = sorted(i for i, b in tok.idx2token.items() if len(b) > 1 and not is_utf8(b))
    picks = multi[:: max(1, len(multi) // 24)][:24]
    joined = b"".join(tok.idx2token[i] for i in picks)
    # Each token alone, then glued to text on both sides.
    cases = [("bytes_literal_tokens_joined", joined)]
    for i in picks[:8]:
        cases.append((f"bytes_literal_token_{i}", b"x" + tok.idx2token[i] + b"y"))
    return cases


def is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def main():
    tok = load_tokenizer()
    cases = []
    for name, text in text_cases():
        data = text.encode("utf-8")
        ids = tok.encode(text)
        assert ids == tok.encodeBytes(data)
        cases.append((name, data, ids))
    for name, data in byte_cases() + byte_literal_token_cases(tok):
        cases.append((name, data, tok.encodeBytes(data)))

    out = []
    names = set()
    for name, data, ids in cases:
        assert name not in names, name
        names.add(name)
        assert tok.decodeBytes(ids) == data, name
        out.append({"name": name, "hex": data.hex(), "ids": ids})

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(c, separators=(", ", ": ")) for c in out))
        f.write("\n]\n")
    print(f"wrote {len(out)} cases to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
