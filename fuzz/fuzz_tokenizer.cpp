// Fuzzes a model's tokenizer.json (Tokenizer::load, as `amalgam tokenize` and the language
// model commands read it), then encodes a few texts with it, the input's own bytes among
// them: a tokenizer that loads must tokenize any UTF-8 text or refuse it as an InputError.
#include <string>

#include "fuzz_util.h"
#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace amalgam;
  const auto dir = fuzz::work_dir() / "tokenizer";
  std::filesystem::create_directories(dir);
  fuzz::write_bytes(dir / "tokenizer.json", fuzz::as_text(data, size));
  fuzz::accept_input_errors([&] {
    const auto tokenizer = text::Tokenizer::load(dir);
    for (const std::string text : {std::string(), std::string("Hello, world! 123 caf\u00e9 \U0001F600"),
                                   std::string(fuzz::as_text(data, std::min<size_t>(size, 256)))})
      fuzz::accept_input_errors([&] {
        const auto ids = tokenizer.encode(text);
        tokenizer.tokens(ids);
      });
  });
  return 0;
}
