#include "zoo/letters.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_OUTLINE_H

#include <memory>
#include <stdexcept>
#include <type_traits>

#include "core/error.h"
#include "zoo/raster.h"

namespace amalgam::zoo {

namespace fs = std::filesystem;

namespace {

constexpr int kLetters = 26;

// Split fonts chosen so that training sees every style (sans, serif, mono, narrow; regular,
// bold, italic) and the held-out splits see new files of those styles.
const std::vector<std::string> kTrainFonts = {
    "dejavu/DejaVuSans.ttf",
    "dejavu/DejaVuSansMono-Bold.ttf",
    "dejavu/DejaVuSerif.ttf",
    "liberation/LiberationMono-Regular.ttf",
    "liberation/LiberationMono-Italic.ttf",
    "liberation/LiberationSans-Regular.ttf",
    "liberation/LiberationSans-Bold.ttf",
    "liberation/LiberationSans-BoldItalic.ttf",
    "liberation/LiberationSansNarrow-Regular.ttf",
    "liberation/LiberationSansNarrow-Italic.ttf",
    "liberation/LiberationSerif-Regular.ttf",
    "liberation/LiberationSerif-Bold.ttf",
    "freefont/FreeMono.ttf",
    "freefont/FreeMonoOblique.ttf",
    "freefont/FreeSansBold.ttf",
    "freefont/FreeSansOblique.ttf",
    "freefont/FreeSansBoldOblique.ttf",
    "freefont/FreeSerif.ttf",
    "freefont/FreeSerifBold.ttf",
    "freefont/FreeSerifItalic.ttf",
};
const std::vector<std::string> kValFonts = {
    "dejavu/DejaVuSans-Bold.ttf",
    "liberation/LiberationMono-Bold.ttf",
    "liberation/LiberationSans-Italic.ttf",
    "liberation/LiberationSansNarrow-BoldItalic.ttf",
    "liberation/LiberationSerif-BoldItalic.ttf",
    "freefont/FreeMonoBoldOblique.ttf",
};
const std::vector<std::string> kTestFonts = {
    "dejavu/DejaVuSerif-Bold.ttf",
    "dejavu/DejaVuSansMono.ttf",
    "liberation/LiberationMono-BoldItalic.ttf",
    "liberation/LiberationSansNarrow-Bold.ttf",
    "liberation/LiberationSerif-Italic.ttf",
    "freefont/FreeSans.ttf",
    "freefont/FreeMonoBold.ttf",
    "freefont/FreeSerifBoldItalic.ttf",
};

struct LibraryDeleter {
  void operator()(FT_Library library) const { FT_Done_FreeType(library); }
};
using Library = std::unique_ptr<std::remove_pointer_t<FT_Library>, LibraryDeleter>;

struct FaceDeleter {
  void operator()(FT_Face face) const { FT_Done_Face(face); }
};
using Face = std::unique_ptr<std::remove_pointer_t<FT_Face>, FaceDeleter>;

// One per thread: FreeType objects must not be shared between threads.
Library make_library() {
  FT_Library library = nullptr;
  if (FT_Init_FreeType(&library) != 0) throw std::runtime_error("FreeType: cannot initialise the library");
  return Library(library);
}

// The element types of FT_Outline's arrays changed signedness between FreeType versions.
using Tag = std::remove_pointer_t<decltype(FT_Outline::tags)>;
using ContourEnd = std::remove_pointer_t<decltype(FT_Outline::contours)>;

// A glyph's outline in font units, and its control box's centre and larger side.
struct Glyph {
  std::vector<FT_Vector> points;
  std::vector<Tag> tags;
  std::vector<ContourEnd> contours;
  int flags = 0;
  double cx = 0, cy = 0, extent = 0;
};

Glyph copy_glyph(const FT_Outline& o) {
  Glyph g;
  g.points.assign(o.points, o.points + o.n_points);
  g.tags.assign(o.tags, o.tags + o.n_points);
  g.contours.assign(o.contours, o.contours + o.n_contours);
  g.flags = o.flags;
  FT_BBox box;
  FT_Outline_Get_CBox(&o, &box);
  g.cx = 0.5 * static_cast<double>(box.xMin + box.xMax);
  g.cy = 0.5 * static_cast<double>(box.yMin + box.yMax);
  g.extent = static_cast<double>(std::max(box.xMax - box.xMin, box.yMax - box.yMin));
  return g;
}

// The 26 capitals of a font file, unscaled (font units need no size and no hinting).
std::vector<Glyph> load_capitals(FT_Library library, const fs::path& file) {
  FT_Face raw = nullptr;
  if (FT_New_Face(library, file.c_str(), 0, &raw) != 0) throw InputError(file, "FreeType cannot open this font");
  const Face face(raw);
  std::vector<Glyph> glyphs;
  for (int i = 0; i < kLetters; ++i) {
    const char letter = static_cast<char>('A' + i);
    const FT_UInt index = FT_Get_Char_Index(face.get(), static_cast<FT_ULong>(letter));
    if (index == 0 || FT_Load_Glyph(face.get(), index, FT_LOAD_NO_SCALE | FT_LOAD_NO_BITMAP) != 0 ||
        face->glyph->format != FT_GLYPH_FORMAT_OUTLINE || face->glyph->outline.n_points == 0)
      throw InputError(file, std::string("no outline glyph for '") + letter + "'");
    glyphs.push_back(copy_glyph(face->glyph->outline));
  }
  return glyphs;
}

// How one image is drawn.
struct LetterStyle {
  int font = 0;
  double size = 0;      // the glyph's larger side, pixels
  double aspect = 1;    // width scale relative to height
  double shear = 0;     // x += shear * y
  double rotation = 0;  // radians, counterclockwise
  double dx = 0, dy = 0;
  double embolden = 0;  // pixels added to the stroke width
  double bg = 0, fg = 1, noise = 0;
};

LetterStyle random_style(int fonts, Rng& rng) {
  LetterStyle s;
  s.font = static_cast<int>(rng.below(fonts));
  s.size = rng.uniform(13.0, 20.0);
  s.aspect = rng.uniform(0.85, 1.15);
  s.shear = rng.uniform(-0.2, 0.2);
  s.rotation = rng.uniform(-15.0, 15.0) * kPi / 180;
  s.dx = rng.uniform(-2.0, 2.0);
  s.dy = rng.uniform(-2.0, 2.0);
  s.embolden = rng.coin() ? 0.0 : rng.uniform(0.3, 1.5);
  s.bg = rng.uniform(0.0, 0.2);
  s.fg = rng.uniform(0.7, 1.0);
  s.noise = rng.uniform(0.0, 0.05);
  return s;
}

// The glyph's points mapped to 26.6 pixel coordinates of the canvas (y up, origin at the
// bottom left, as FreeType's rasteriser wants them), its box centred at the canvas centre
// plus the style's shift. The transform is computed here rather than by FreeType so that
// the rounding to 26.6 is explicit.
std::vector<FT_Vector> place(const Glyph& g, const LetterStyle& s) {
  const double scale = s.size / g.extent;
  const double c = det_cos(s.rotation), sn = det_sin(s.rotation);
  const Vec2 centre{kSide / 2.0 + s.dx, kSide / 2.0 + s.dy};
  std::vector<FT_Vector> out;
  out.reserve(g.points.size());
  for (const FT_Vector& v : g.points) {
    Vec2 p{(static_cast<double>(v.x) - g.cx) * scale * s.aspect, (static_cast<double>(v.y) - g.cy) * scale};
    p.x += s.shear * p.y;
    p = rotate(p, c, sn) + centre;
    out.push_back({static_cast<FT_Pos>(std::floor(p.x * 64 + 0.5)), static_cast<FT_Pos>(std::floor(p.y * 64 + 0.5))});
  }
  return out;
}

void render_letter(FT_Library library, const Glyph& g, const LetterStyle& s, Canvas& canvas) {
  std::vector<FT_Vector> points = place(g, s);
  std::vector<Tag> tags = g.tags;
  std::vector<ContourEnd> contours = g.contours;
  FT_Outline outline{};
  outline.n_points = static_cast<decltype(outline.n_points)>(points.size());
  outline.n_contours = static_cast<decltype(outline.n_contours)>(contours.size());
  outline.points = points.data();
  outline.tags = tags.data();
  outline.contours = contours.data();
  outline.flags = g.flags;
  if (s.embolden > 0 && FT_Outline_Embolden(&outline, static_cast<FT_Pos>(std::floor(s.embolden * 64 + 0.5))) != 0)
    throw std::runtime_error("FreeType: cannot embolden a glyph outline");

  std::array<unsigned char, kPixels> cover{};
  FT_Bitmap bitmap{};
  bitmap.rows = kSide;
  bitmap.width = kSide;
  bitmap.pitch = kSide;  // positive: the first row in memory is the top one
  bitmap.buffer = cover.data();
  bitmap.num_grays = 256;
  bitmap.pixel_mode = FT_PIXEL_MODE_GRAY;
  if (FT_Outline_Get_Bitmap(library, &outline, &bitmap) != 0)
    throw std::runtime_error("FreeType: cannot render a glyph outline");
  for (size_t i = 0; i < cover.size(); ++i) canvas[i] = static_cast<float>(s.bg + (s.fg - s.bg) * cover[i] / 255.0);
}

}  // namespace

std::vector<std::string> letters_classes() {
  std::vector<std::string> classes;
  for (int i = 0; i < kLetters; ++i) classes.emplace_back(1, static_cast<char>('A' + i));
  return classes;
}

const std::vector<std::string>& letters_fonts(std::string_view split) {
  if (split == "train") return kTrainFonts;
  if (split == "val") return kValFonts;
  if (split == "test") return kTestFonts;
  throw std::invalid_argument("letters_fonts: no split '" + std::string(split) + "'");
}

void check_letters_fonts(const fs::path& font_dir) {
  for (const auto* fonts : {&kTrainFonts, &kValFonts, &kTestFonts})
    for (const auto& f : *fonts) {
      std::error_code ec;
      if (!fs::is_regular_file(font_dir / f, ec))
        throw InputError(font_dir / f,
                         "missing: the zoo's letters task renders this font; run scripts/setup-deps.sh "
                         "(it installs fonts-dejavu-core, fonts-liberation and fonts-freefont-ttf)");
    }
}

LettersSplit generate_letters_split(const std::string& split, int64_t n, uint64_t seed, const fs::path& font_dir) {
  check_letters_fonts(font_dir);
  const std::vector<std::string>& files = letters_fonts(split);
  std::vector<std::vector<Glyph>> glyphs;
  {
    const Library library = make_library();
    for (const auto& f : files) glyphs.push_back(load_capitals(library.get(), font_dir / f));
  }
  LettersSplit out;
  out.split.name = split;
  out.font.resize(static_cast<size_t>(n));
  const uint64_t split_seed = derive_seed(seed, split);
  out.split.labels = balanced_labels(n, kLetters, derive_seed(split_seed, "labels"));
  out.split.images = render_images(n, make_library, [&](const Library& library, int64_t i, Canvas& canvas) {
    Rng rng(derive_seed(split_seed, "image", static_cast<uint64_t>(i)));
    const LetterStyle style = random_style(static_cast<int>(files.size()), rng);
    const auto label = static_cast<size_t>(out.split.labels[static_cast<size_t>(i)]);
    render_letter(library.get(), glyphs[static_cast<size_t>(style.font)][label], style, canvas);
    add_noise(canvas, style.noise, rng);
    out.font[static_cast<size_t>(i)] = style.font;
  });
  return out;
}

}  // namespace amalgam::zoo
