//! Tokenizer tests: the World tokenizer against ids from the official Python TRIE_TOKENIZER
//! (tests/fixtures/world_tokenizer.json, written by scripts/make_tokenizer_fixtures.py),
//! round trips for all three tokenizers, and tokenizer selection.

use rwkv_cli::tokenizer::{
    kind_for_vocab, load, BytesTokenizer, NeoxTokenizer, Tokenizer, TokenizerKind, WorldTokenizer,
};

const WORLD_FIXTURE: &str = include_str!("fixtures/world_tokenizer.json");

struct Case {
    name: String,
    bytes: Vec<u8>,
    ids: Vec<u32>,
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn world_cases() -> Vec<Case> {
    let json: serde_json::Value = serde_json::from_str(WORLD_FIXTURE).expect("fixture json");
    json.as_array()
        .expect("fixture is a list")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            bytes: from_hex(c["hex"].as_str().expect("hex")),
            ids: c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect(),
        })
        .collect()
}

fn world() -> WorldTokenizer {
    WorldTokenizer::new().expect("World tokenizer")
}

fn neox() -> NeoxTokenizer {
    NeoxTokenizer::new().expect("20B tokenizer")
}

fn concat_token_bytes(t: &dyn Tokenizer, ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|&id| t.token_bytes(id)).collect()
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------- World

#[test]
fn world_fixture_is_substantial() {
    let cases = world_cases();
    assert!(cases.len() >= 50, "only {} fixture cases", cases.len());
    assert!(cases.iter().any(|c| c.bytes.is_empty()));
    assert!(cases.iter().any(|c| std::str::from_utf8(&c.bytes).is_err()));
}

#[test]
fn world_matches_official_ids() {
    let t = world();
    let mut failures = Vec::new();
    for case in world_cases() {
        let got = t.encode(&case.bytes).expect("encode");
        if got != case.ids {
            failures.push(format!("{}: got {:?}, want {:?}", case.name, got, case.ids));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn world_round_trips_fixture_cases() {
    let t = world();
    for case in world_cases() {
        let ids = t.encode(&case.bytes).expect("encode");
        let decoded = t.decode(&ids);
        assert_eq!(decoded, case.bytes, "{}: decode(encode(s)) != s", case.name);
        assert_eq!(
            concat_token_bytes(&t, &ids),
            decoded,
            "{}: token_bytes concatenation != decode",
            case.name
        );
        assert_eq!(t.decode(&case.ids), case.bytes, "{}", case.name);
    }
}

#[test]
fn world_every_token_encodes_to_itself() {
    let t = world();
    assert_eq!(t.vocab_size(), 65530);
    for id in 1..t.vocab_size() as u32 {
        let bytes = t.token_bytes(id);
        assert!(!bytes.is_empty(), "token {id} is empty");
        assert_eq!(t.encode(&bytes).unwrap(), [id], "token {id} {bytes:?}");
    }
}

#[test]
fn world_round_trips_random_bytes() {
    let t = world();
    for seed in 1..20u64 {
        let data = noise(1000 + seed as usize * 37, seed * 0x9e37_79b9_7f4a_7c15);
        let ids = t.encode(&data).unwrap();
        assert_eq!(t.decode(&ids), data);
    }
}

#[test]
fn world_decode_skips_eot_and_unknown_ids() {
    let t = world();
    let ids = t.encode(b"hi there").unwrap();
    let mut noisy = vec![0, 65530, u32::MAX];
    noisy.extend(&ids);
    noisy.extend([0, 70000]);
    assert_eq!(t.decode(&noisy), b"hi there");
    assert!(t.token_bytes(0).is_empty());
    assert!(t.token_bytes(65530).is_empty());
    assert_eq!(t.eot_token(), Some(0));
    assert_eq!(t.name(), "world");
}

#[test]
fn world_streaming_split_character() {
    // "\xe4" alone is a token (id 229); streaming its bytes and then the rest rebuilds the text.
    let t = world();
    let text = "中".as_bytes();
    let mut ids = t.encode(&text[..1]).unwrap();
    ids.extend(t.encode(&text[1..]).unwrap());
    assert_eq!(ids[0], 229);
    assert_eq!(concat_token_bytes(&t, &ids), text);
}

// ---------------------------------------------------------------- bytes

#[test]
fn bytes_round_trips_all_byte_values() {
    let t = BytesTokenizer;
    let all: Vec<u8> = (0..=255).collect();
    let ids = t.encode(&all).unwrap();
    assert_eq!(ids, (0..256).collect::<Vec<u32>>());
    assert_eq!(t.decode(&ids), all);
    assert_eq!(concat_token_bytes(&t, &ids), all);
    assert_eq!(t.decode(&[65, 256, 1000, 66]), b"AB");
    assert!(t.token_bytes(256).is_empty());
    assert_eq!(t.vocab_size(), 256);
    assert_eq!(t.eot_token(), None);
}

// ---------------------------------------------------------------- 20B

#[test]
fn neox_hello_world_ids() {
    let t = neox();
    assert_eq!(t.encode(b"Hello world").unwrap(), [12092, 1533]);
    assert_eq!(t.vocab_size(), 50277);
    assert_eq!(t.eot_token(), Some(0));
    assert_eq!(t.name(), "20b");
}

#[test]
fn neox_round_trips() {
    let t = neox();
    for s in [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.\n\nNew paragraph.",
        "中文分词测试：我爱北京天安门。",
        "日本語のテキスト",
        "I love 🍕! 👨\u{200d}👩\u{200d}👧 🇺🇸",
        "Café naïve résumé",
        "mixed   spaces\t\ttabs\r\nand          many                          spaces",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "",
    ] {
        let ids = t.encode(s.as_bytes()).unwrap();
        assert_eq!(t.decode(&ids), s.as_bytes(), "{s:?}: {ids:?}");
        assert_eq!(concat_token_bytes(&t, &ids), s.as_bytes(), "{s:?}");
    }
}

#[test]
fn neox_token_bytes_are_raw_bytes() {
    let t = neox();
    // An emoji spans several byte-level tokens; each token's bytes are a piece of its UTF-8.
    let ids = t.encode("🍕".as_bytes()).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    assert!(std::str::from_utf8(&t.token_bytes(ids[0])).is_err());
    assert_eq!(concat_token_bytes(&t, &ids), "🍕".as_bytes());
    // " world" is one token whose byte-level spelling is "Ġworld".
    assert_eq!(t.token_bytes(1533), b" world");
}

#[test]
fn neox_matches_reference_decoder() {
    let t = neox();
    let reference =
        tokenizers::Tokenizer::from_bytes(include_bytes!("../models/20B_tokenizer.json"))
            .expect("reference tokenizer");
    for s in ["Hello, world!", "中文 and 😀 and      spaces", "a\n\n\nb"] {
        let ids = t.encode(s.as_bytes()).unwrap();
        let want = reference.decode(&ids, true).unwrap();
        assert_eq!(t.decode(&ids), want.as_bytes(), "{s:?}");
    }
}

#[test]
fn neox_special_and_invalid_input() {
    let t = neox();
    assert_eq!(t.encode(b"<|endoftext|>").unwrap(), [0]);
    assert!(t.token_bytes(0).is_empty());
    assert!(t.token_bytes(1).is_empty());
    assert!(t.token_bytes(50277).is_empty());
    assert_eq!(t.decode(&[12092, 0, 99999, 1533]), b"Hello world");
    // Invalid UTF-8 is encoded through its lossy conversion.
    let ids = t.encode(b"a\xffb").unwrap();
    assert_eq!(t.decode(&ids), "a\u{fffd}b".as_bytes());
}

// ---------------------------------------------------------------- selection

#[test]
fn kind_for_vocab_mapping() {
    for n in [65529, 65530, 65536] {
        assert_eq!(kind_for_vocab(n).unwrap(), TokenizerKind::World, "{n}");
    }
    for n in [50254, 50277, 50280, 50304] {
        assert_eq!(kind_for_vocab(n).unwrap(), TokenizerKind::Neox20B, "{n}");
    }
    assert_eq!(kind_for_vocab(256).unwrap(), TokenizerKind::Bytes);
    for n in [
        0, 255, 257, 1000, 32000, 50253, 50305, 65528, 65537, 100_000,
    ] {
        let err = kind_for_vocab(n).unwrap_err().to_string();
        assert!(err.contains("--tokenizer"), "{err}");
        assert!(err.contains(&n.to_string()), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn kind_names_parse_and_display() {
    for kind in [
        TokenizerKind::World,
        TokenizerKind::Neox20B,
        TokenizerKind::Bytes,
    ] {
        assert_eq!(kind.to_string().parse::<TokenizerKind>().unwrap(), kind);
    }
    assert_eq!(
        "world".parse::<TokenizerKind>().unwrap(),
        TokenizerKind::World
    );
    assert_eq!(
        "20b".parse::<TokenizerKind>().unwrap(),
        TokenizerKind::Neox20B
    );
    assert_eq!(
        "neox".parse::<TokenizerKind>().unwrap(),
        TokenizerKind::Neox20B
    );
    assert_eq!(
        "NeoX".parse::<TokenizerKind>().unwrap(),
        TokenizerKind::Neox20B
    );
    assert_eq!(
        "bytes".parse::<TokenizerKind>().unwrap(),
        TokenizerKind::Bytes
    );
    let err = "gpt2".parse::<TokenizerKind>().unwrap_err().to_string();
    for name in ["world", "20b", "neox", "bytes", "gpt2"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn load_gives_each_kind() {
    for (kind, vocab) in [
        (TokenizerKind::World, 65536),
        (TokenizerKind::Neox20B, 50277),
        (TokenizerKind::Bytes, 256),
    ] {
        let t = load(kind).unwrap();
        assert_eq!(t.name(), kind.to_string());
        assert_eq!(kind_for_vocab(vocab).unwrap(), kind);
        assert!(t.vocab_size() <= vocab);
        let ids = t.encode(b"round trip").unwrap();
        assert_eq!(t.decode(&ids), b"round trip");
    }
}
