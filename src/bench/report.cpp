#include "bench/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "core/child_process.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "io/json_file.h"

namespace amalgam {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using Value = std::optional<double>;  // nothing: missing in the report, rendered "–" or NaN

namespace {

constexpr std::string_view kFormat = "amalgam-bench-report";
constexpr std::string_view kDash = "–";

// ---- Reading the report ---------------------------------------------------------------------

// A JSON value and its path in the report ("in_domain.rows[2].accuracy"): every access checks
// the type, so a malformed report fails with the one field that is wrong.
class Field {
 public:
  Field(const json& value, std::string path) : value_(&value), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& problem) const {
    throw InputError("bench report: " + (path_.empty() ? std::string("the report") : "'" + path_ + "'") + " " +
                     problem);
  }

  // A member that may be absent; null counts as absent.
  std::optional<Field> find(const std::string& key) const {
    const json& obj = object();
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    return Field(*it, child(key));
  }
  Field at(const std::string& key) const {
    if (auto f = find(key)) return *f;
    throw InputError("bench report: '" + child(key) + "' is missing");
  }
  const json& object() const {
    if (!value_->is_object()) fail(expected("an object"));
    return *value_;
  }
  std::vector<Field> items() const {
    if (!value_->is_array()) fail(expected("an array"));
    std::vector<Field> out;
    for (size_t i = 0; i < value_->size(); ++i) out.emplace_back((*value_)[i], path_ + "[" + std::to_string(i) + "]");
    return out;
  }
  std::string text() const {
    if (!value_->is_string()) fail(expected("a string"));
    return value_->get<std::string>();
  }
  double number() const {
    if (!value_->is_number()) fail(expected("a number"));
    return value_->get<double>();
  }
  Value number_or_null() const { return value_->is_null() ? Value() : Value(number()); }
  bool boolean() const {
    if (!value_->is_boolean()) fail(expected("true or false"));
    return value_->get<bool>();
  }
  const json& value() const { return *value_; }

 private:
  std::string expected(const std::string& what) const {
    return "must be " + what + ", not " + std::string(value_->type_name());
  }
  std::string child(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  const json* value_;
  std::string path_;
};

Value number_at(const Field& object, const std::string& key) {
  const auto f = object.find(key);
  return f ? Value(f->number()) : Value();
}

std::vector<std::string> strings(const Field& array) {
  std::vector<std::string> out;
  for (const Field& f : array.items()) out.push_back(f.text());
  return out;
}

std::vector<Value> numbers(const Field& array) {
  std::vector<Value> out;
  for (const Field& f : array.items()) out.push_back(f.number_or_null());
  return out;
}

Value element(const std::vector<Value>& values, size_t i) {
  return i < values.size() ? values[i] : Value();
}

struct Method {
  std::string key, label, kind;
};

// A method's row of one table: every method of `methods` in its order (without a row when the
// section has none for it), then rows of methods the list does not name.
struct MethodRow {
  std::string label;
  size_t style = 1;  // gnuplot line type: a method keeps its colour in every chart
  std::optional<Field> row;
};

class Report {
 public:
  explicit Report(const json& root) : root_(root, "") {
    const Field format = root_.at("format");
    if (format.text() != kFormat) format.fail("is '" + format.text() + "', not '" + std::string(kFormat) + "'");
    const Field version = root_.at("version");
    if (version.number() != 1) version.fail("is " + version.value().dump() + "; this amalgam reads version 1");
    root_.at("settings").object();
    tasks_ = strings(root_.at("tasks"));
    for (const Field& m : root_.at("methods").items())
      methods_.push_back({m.at("key").text(), m.at("label").text(), m.at("kind").text()});
  }

  const Field& root() const { return root_; }
  const std::vector<std::string>& tasks() const { return tasks_; }
  const std::vector<Method>& methods() const { return methods_; }

  // An experiment's section, or nothing when it is absent or null.
  std::optional<Field> section(const std::string& name) const {
    auto f = root_.find(name);
    if (f) f->object();
    return f;
  }

  std::string label(const std::string& key) const {
    for (const Method& m : methods_)
      if (m.key == key) return m.label;
    return key;
  }

  std::vector<MethodRow> ordered(const Field& rows) const {
    const std::vector<Field> items = rows.items();
    std::vector<std::string> keys;
    for (const Field& r : items) keys.push_back(r.at("method").text());
    std::vector<bool> used(items.size(), false);
    std::vector<MethodRow> out;
    for (size_t m = 0; m < methods_.size(); ++m) {
      MethodRow r{methods_[m].label, m + 1, std::nullopt};
      for (size_t i = 0; i < items.size() && !r.row; ++i)
        if (!used[i] && keys[i] == methods_[m].key) {
          r.row = items[i];
          used[i] = true;
        }
      out.push_back(r);
    }
    for (size_t i = 0; i < items.size(); ++i)
      if (!used[i]) out.push_back({keys[i], out.size() + 1, items[i]});
    return out;
  }

 private:
  Field root_;
  std::vector<std::string> tasks_;
  std::vector<Method> methods_;
};

// ---- Markdown -------------------------------------------------------------------------------

std::string fixed(Value v, int decimals) {
  if (!v || !std::isfinite(*v)) return std::string(kDash);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, *v);
  return buf;
}

std::string percent(Value v) {
  return fixed(v, 1);
}

Value mib(Value bytes) {
  return bytes ? Value(*bytes / (1024.0 * 1024.0)) : Value();
}

std::string compact(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A settings or hyperparameter value as a person writes it: 0.3, 256, yes, adamw.
std::string scalar(const json& v) {
  if (v.is_null()) return std::string(kDash);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number_float()) return compact(v.get<double>());
  return v.dump();
}

std::string code(const std::string& s) {
  return s.find('`') == std::string::npos ? "`" + s + "`" : "`` " + s + " ``";
}

std::string joined(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

// A GitHub markdown table; `align` says per column 'l' or 'r' (columns past it: 'r').
class Table {
 public:
  Table(std::vector<std::string> header, std::string align) : header_(std::move(header)), align_(std::move(align)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }

  std::string str() const {
    std::string s = line(header_) + "|";
    for (size_t c = 0; c < header_.size(); ++c) s += (c < align_.size() && align_[c] == 'l') ? "---|" : "---:|";
    s += "\n";
    for (const auto& row : rows_) s += line(row);
    return s;
  }

 private:
  // Cells are text from the report: a '|' or a line break would split the table.
  static std::string cell(const std::string& text) {
    std::string out;
    for (char ch : text) {
      if (ch == '|')
        out += "\\|";
      else
        out += (ch == '\n' || ch == '\r') ? ' ' : ch;
    }
    return out;
  }
  std::string line(const std::vector<std::string>& cells) const {
    std::string s = "|";
    for (size_t c = 0; c < header_.size(); ++c) {
      s += ' ';
      s += c < cells.size() ? cell(cells[c]) : std::string(kDash);
      s += " |";
    }
    return s + "\n";
  }

  std::vector<std::string> header_;
  std::string align_;
  std::vector<std::vector<std::string>> rows_;
};

std::string chart_link(const std::string& name, const std::string& title, const std::vector<std::string>& charts) {
  if (std::find(charts.begin(), charts.end(), name) == charts.end()) return "";
  return "\n![" + title + "](charts/" + name + ".png)\n\nVector version: [charts/" + name + ".svg](charts/" + name +
         ".svg)\n";
}

// "lambda=0.3, k=20"; "none" for a method without hyperparameters.
std::string parameters(const std::optional<Field>& p) {
  if (!p) return std::string(kDash);
  const json& obj = p->object();
  if (obj.empty()) return "none";
  std::vector<std::string> parts;
  for (const auto& [key, value] : obj.items()) parts.push_back(key + "=" + scalar(value));
  return joined(parts, ", ");
}

std::string header_markdown(const Report& r) {
  const Field& root = r.root();
  auto text = [&](const std::string& key) {
    const auto f = root.find(key);
    return f ? f->text() : std::string(kDash);
  };
  std::ostringstream s;
  s << "# amalgam bench report\n\n";
  s << "- Command: " << (root.find("command") ? code(text("command")) : std::string(kDash)) << "\n";
  s << "- Date: " << text("date") << "\n";
  s << "- Zoo: " << (root.find("zoo") ? code(text("zoo")) : std::string(kDash)) << "\n";
  const auto quick = root.find("quick");
  s << "- Mode: " << (quick ? (quick->boolean() ? "quick" : "full") : std::string(kDash)) << "\n";
  const Value seconds = number_at(root, "seconds");
  s << "- Total time: "
    << (seconds ? fixed(seconds, 1) + " s (" + fixed(*seconds / 60, 1) + " min)" : std::string(kDash)) << "\n";
  s << "- Tasks (" << r.tasks().size() << "): " << joined(r.tasks(), ", ") << "\n";

  Table settings({"setting", "value"}, "ll");
  for (const auto& [key, value] : root.at("settings").object().items()) settings.add({key, scalar(value)});
  s << "\n## Settings\n\n" << settings.str();

  Table methods({"method", "key", "kind"}, "lll");
  for (const Method& m : r.methods()) methods.add({m.label, m.key, m.kind});
  s << "\n## Methods\n\n" << methods.str();
  return s.str();
}

// The methods from best to worst average, with ">" only where two neighbours differ by more
// than the sum of their standard deviations and "≈" where the spread covers the difference.
std::string ordering_markdown(const Report& r, const Field& section) {
  struct Entry {
    std::string label;
    double average, sd;
  };
  std::vector<Entry> entries;
  for (const Field& row : section.at("rows").items()) {
    const Value average = number_at(row, "average"), sd = number_at(row, "average_sd");
    const std::string key = row.at("method").text();
    if (average && sd && key != "finetuned" && key != "probe_ceiling") entries.push_back({r.label(key), *average, *sd});
  }
  if (entries.size() < 2) return "";
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.average > b.average; });
  std::string line = "\nOrdering the spread supports: " + entries[0].label + " (" + fixed(entries[0].average, 1) + ")";
  for (size_t i = 1; i < entries.size(); ++i) {
    const bool apart = entries[i - 1].average - entries[i].average > entries[i - 1].sd + entries[i].sd;
    line += std::string(apart ? " > " : " ≈ ") + entries[i].label + " (" + fixed(entries[i].average, 1) + ")";
  }
  return line + ".\n";
}

std::string in_domain_markdown(const Report& r, const Field& section, const std::vector<std::string>& charts) {
  std::vector<std::string> header = {"method"};
  header.insert(header.end(), r.tasks().begin(), r.tasks().end());
  for (const char* h : {"average", "normalized", "chosen hyperparameters"}) header.push_back(h);
  Table table(header, "l" + std::string(r.tasks().size() + 2, 'r') + "l");
  for (const MethodRow& m : r.ordered(section.at("rows"))) {
    std::vector<std::string> row = {m.label};
    if (!m.row) {
      table.add(row);
      continue;
    }
    const Field accuracy = m.row->at("accuracy");
    for (const std::string& task : r.tasks()) row.push_back(percent(number_at(accuracy, task)));
    const Value sd = number_at(*m.row, "average_sd");
    row.push_back(percent(number_at(*m.row, "average")) + (sd ? " ± " + fixed(sd, 1) : std::string()));
    row.push_back(percent(number_at(*m.row, "normalized_average")));
    row.push_back(parameters(m.row->find("parameters")));
    table.add(row);
  }
  const Value seeds = number_at(section, "seeds");
  std::ostringstream s;
  s << "\n## In-domain accuracy\n\nTest accuracy (%) of each merge of all " << r.tasks().size()
    << " tasks, with the hyperparameters chosen on validation data";
  if (seeds && *seeds > 1)
    s << "; each figure the mean over " << fixed(seeds, 0)
      << " zoos with independently seeded fine-tunes, ± the sample standard deviation of the average.\n\n"
      << table.str() << ordering_markdown(r, section);
  else
    s << " (one zoo: no spread measured).\n\n" << table.str();
  s << chart_link("accuracy", "In-domain accuracy", charts);
  if (const auto validation = section.find("validation")) {
    Table grid({"method", "hyperparameters", "validation average", "chosen"}, "llrl");
    for (const Field& v : validation->items()) {
      const auto chosen = v.find("chosen");
      grid.add({r.label(v.at("method").text()), parameters(v.find("parameters")), percent(number_at(v, "average")),
                chosen && chosen->boolean() ? "✓" : ""});
    }
    s << "\n### Validation grid\n\n" << grid.str();
  }
  return s.str();
}

std::string unseen_markdown(const Report& r, const Field& section) {
  std::ostringstream s;
  s << "\n## Unseen tasks\n\nTest accuracy (%) on tasks left out of the merge.\n";
  const std::vector<Field> splits = section.at("splits").items();
  for (size_t i = 0; i < splits.size(); ++i) {
    const std::vector<std::string> held_out = strings(splits[i].at("held_out"));
    const std::vector<std::string> merged = strings(splits[i].at("merged"));
    std::vector<std::string> header = {"method"};
    header.insert(header.end(), held_out.begin(), held_out.end());
    header.push_back("held-out average");
    header.push_back("merged average");
    Table table(header, "l");
    for (const MethodRow& m : r.ordered(splits[i].at("rows"))) {
      std::vector<std::string> row = {m.label};
      if (m.row) {
        const Field accuracy = m.row->at("accuracy");
        for (const std::string& task : held_out) row.push_back(percent(number_at(accuracy, task)));
        row.push_back(percent(number_at(*m.row, "held_out_average")));
        row.push_back(percent(number_at(*m.row, "merged_average")));
      }
      table.add(row);
    }
    s << "\n### Split " << i + 1 << ": held out " << joined(held_out, ", ") << "\n\nMerged: " << joined(merged, ", ")
      << "\n\n"
      << table.str();
  }
  return s.str();
}

std::string corruptions_markdown(const Report& r, const Field& section, const std::vector<std::string>& charts) {
  const std::vector<std::string> corruptions = strings(section.at("corruptions"));
  std::vector<std::string> header = {"method"};
  header.insert(header.end(), corruptions.begin(), corruptions.end());
  Table table(header, "l");
  for (const MethodRow& m : r.ordered(section.at("rows"))) {
    std::vector<std::string> row = {m.label};
    if (m.row) {
      const Field average = m.row->at("average");
      for (const std::string& c : corruptions) row.push_back(percent(number_at(average, c)));
    }
    table.add(row);
  }
  const auto tasks = section.find("tasks");
  std::ostringstream s;
  s << "\n## Corruptions\n\nTest accuracy (%) averaged over "
    << (tasks ? "the tasks " + joined(strings(*tasks), ", ") : std::string("the tasks")) << ", per corruption"
    << (section.find("severity") ? " at severity " + scalar(section.at("severity").value()) : std::string()) << ".\n\n"
    << table.str() << chart_link("corruptions", "Accuracy under corruptions", charts);
  return s.str();
}

// The distinct x values of a family of curves (tasks seen, subset sizes), sorted.
std::vector<double> union_of(const std::vector<std::vector<Value>>& xs) {
  std::set<double> all;
  for (const auto& x : xs)
    for (const Value& v : x)
      if (v) all.insert(*v);
  return {all.begin(), all.end()};
}

// The value of a curve at x, or nothing where the curve has no point there.
Value at_x(const std::vector<Value>& x, const std::vector<Value>& y, double where) {
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] && *x[i] == where) return element(y, i);
  return {};
}

std::string tasks_column(Value n) {
  if (!n) return std::string(kDash);
  return compact(*n) + (*n == 1 ? " task" : " tasks");
}

std::string sequential_markdown(const Report& r, const Field& section, const std::vector<std::string>& charts) {
  const std::vector<Field> orders = section.at("orders").items();
  std::vector<MethodRow> rows = r.ordered(section.at("rows"));
  std::vector<std::vector<Value>> seen(rows.size()), means(rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i].row) seen[i] = numbers(rows[i].row->at("tasks_seen")), means[i] = numbers(rows[i].row->at("mean"));
  const std::vector<double> steps = union_of(seen);
  std::vector<std::string> header = {"method"};
  for (double x : steps) header.push_back(tasks_column(x));
  Table table(header, "l");
  std::vector<std::string> order_header = header;
  order_header.insert(order_header.begin() + 1, "order");
  Table per_order(order_header, "l");
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<std::string> row = {rows[i].label};
    for (double x : steps) row.push_back(percent(at_x(seen[i], means[i], x)));
    table.add(row);
    const auto normalized = rows[i].row ? rows[i].row->find("normalized") : std::nullopt;
    if (!normalized) continue;
    const std::vector<Field> per = normalized->items();
    for (size_t o = 0; o < per.size(); ++o) {
      std::vector<std::string> order_row = {rows[i].label, std::to_string(o + 1)};
      const std::vector<Value> values = numbers(per[o]);
      for (double x : steps) order_row.push_back(percent(at_x(seen[i], values, x)));
      per_order.add(order_row);
    }
  }
  std::ostringstream s;
  const auto group = section.find("group_size");
  s << "\n## Sequential merging\n\nTasks are merged "
    << (group ? scalar(group->value()) + " at a time" : std::string("a group at a time")) << ", in " << orders.size()
    << " orders; normalized accuracy (%) after each step, averaged over the orders.\n\n"
    << table.str() << chart_link("sequential", "Sequential merging", charts) << "\n### Per order\n\n";
  for (size_t o = 0; o < orders.size(); ++o) s << o + 1 << ". " << joined(strings(orders[o]), " → ") << "\n";
  s << "\n" << per_order.str();
  return s.str();
}

std::string num_tasks_markdown(const Report& r, const Field& section, const std::vector<std::string>& charts) {
  const std::vector<Value> sizes = numbers(section.at("sizes"));
  const std::vector<MethodRow> rows = r.ordered(section.at("rows"));
  std::vector<std::string> header = {"method"};
  for (const Value& n : sizes) header.push_back(tasks_column(n));
  Table table(header, "l");
  for (const MethodRow& m : rows) {
    std::vector<std::string> row = {m.label};
    if (m.row) {
      const std::vector<Value> mean = numbers(m.row->at("mean"));
      for (size_t k = 0; k < sizes.size(); ++k) row.push_back(percent(element(mean, k)));
    }
    table.add(row);
  }
  std::ostringstream s;
  s << "\n## Number of tasks\n\nNormalized accuracy (%) of merges of subsets of the tasks, averaged over the subsets "
       "of each size.\n\n"
    << table.str() << chart_link("num_tasks", "Number of tasks merged", charts);
  const auto subsets = section.find("subsets");
  if (!subsets) return s.str();
  const std::vector<Field> per_size = subsets->items();
  for (size_t k = 0; k < per_size.size() && k < sizes.size(); ++k) {
    const std::vector<Field> sets = per_size[k].items();
    std::vector<std::string> sub_header = {"method"};
    s << "\n### " << tasks_column(sizes[k]) << "\n\n";
    for (size_t j = 0; j < sets.size(); ++j) {
      sub_header.push_back('S' + std::to_string(j + 1));
      s << "- S" << j + 1 << ": " << joined(strings(sets[j]), ", ") << "\n";
    }
    sub_header.push_back("mean");
    Table detail(sub_header, "l");
    for (const MethodRow& m : rows) {
      std::vector<std::string> row = {m.label};
      if (m.row) {
        const auto normalized = m.row->find("normalized");
        std::vector<Value> values;
        if (normalized && k < normalized->items().size()) values = numbers(normalized->items()[k]);
        for (size_t j = 0; j < sets.size(); ++j) row.push_back(percent(element(values, j)));
        row.push_back(percent(element(numbers(m.row->at("mean")), k)));
      }
      detail.add(row);
    }
    s << "\n" << detail.str();
  }
  return s.str();
}

// wall s, CPU s, peak MiB of one phase (statistics or merge), "–" where it did not run.
std::vector<std::string> usage_cells(const std::optional<Field>& usage) {
  if (!usage) return {std::string(kDash), std::string(kDash), std::string(kDash)};
  return {fixed(number_at(*usage, "wall_seconds"), 2), fixed(number_at(*usage, "cpu_seconds"), 2),
          fixed(mib(number_at(*usage, "peak_rss_bytes")), 1)};
}

std::string mass_markdown(const Field& mass) {
  const Value bundle = number_at(mass, "bundle_bytes"), base = number_at(mass, "base_bytes");
  Value ratio = number_at(mass, "bundle_to_base");
  if (!ratio && bundle && base && *base > 0) ratio = *bundle / *base;
  const auto per_image = mass.find("seconds_per_image");
  const Value sample = per_image ? number_at(*per_image, "sample") : Value();
  const Value batch = per_image ? number_at(*per_image, "batch") : Value();
  const Value merged = number_at(mass, "merged_seconds_per_image");
  auto ms = [](Value seconds) { return seconds ? fixed(*seconds * 1000, 3) + " ms" : std::string(kDash); };
  auto times = [](Value v) { return v ? fixed(v, 2) + "×" : std::string(kDash); };
  auto over = [&](Value a) { return times(a && merged && *merged > 0 ? Value(*a / *merged) : Value()); };
  Table t({"quantity", "value"}, "lr");
  t.add({"bundle size", bundle ? fixed(mib(bundle), 1) + " MiB" : std::string(kDash)});
  t.add({"base model size", base ? fixed(mib(base), 1) + " MiB" : std::string(kDash)});
  t.add({"bundle / base", times(ratio)});
  t.add({"routed latency per image, per-sample routing", ms(sample)});
  t.add({"routed latency per image, batch routing", ms(batch)});
  t.add({"merged model latency per image", ms(merged)});
  t.add({"latency ratio routed / merged, per-sample routing", over(sample)});
  t.add({"latency ratio routed / merged, batch routing", over(batch)});
  return "\n### MASS\n\n" + t.str();
}

std::string cost_markdown(const Report& r, const Field& section, const std::vector<std::string>& charts) {
  Table table({"method", "statistics wall (s)", "statistics CPU (s)", "statistics peak (MiB)", "merge wall (s)",
               "merge CPU (s)", "merge peak (MiB)"},
              "l");
  for (const MethodRow& m : r.ordered(section.at("rows"))) {
    std::vector<std::string> row = {m.label};
    if (m.row)
      for (const char* phase : {"stats", "merge"})
        for (std::string& c : usage_cells(m.row->find(phase))) row.push_back(std::move(c));
    table.add(row);
  }
  std::ostringstream s;
  s << "\n## Cost\n\nEach phase ran as its own process: statistics is the calibration pass of the data-aware "
       "methods, merge the merge itself.\n\n"
    << table.str() << chart_link("cost_time", "Merge wall time", charts)
    << chart_link("cost_memory", "Peak memory", charts);
  if (const auto mass = section.find("mass")) s << mass_markdown(*mass);
  return s.str();
}

// A linear layer's name without the model's prefixes: "3.fc1" for
// "vision_model.encoder.layers.3.mlp.fc1.weight".
std::string short_layer(std::string name) {
  for (const char* prefix : {"vision_model.encoder.layers.", "vision_model."})
    if (name.starts_with(prefix)) {
      name.erase(0, std::string_view(prefix).size());
      break;
    }
  for (const char* part : {"self_attn.", "mlp."})
    if (const size_t at = name.find(part); at != std::string::npos) name.erase(at, std::string_view(part).size());
  if (name.ends_with(".weight")) name.resize(name.size() - std::string_view(".weight").size());
  return name;
}

// One method's residuals: [layer][task], checked against the section's layers and tasks.
std::vector<std::vector<Value>> residual_matrix(const Report& r, const Field& row, size_t layers) {
  const std::vector<Field> per_layer = row.at("relative_residuals").items();
  if (per_layer.size() != layers)
    row.at("relative_residuals")
        .fail("has " + std::to_string(per_layer.size()) + " layers, not " + std::to_string(layers));
  std::vector<std::vector<Value>> out;
  for (const Field& l : per_layer) {
    out.push_back(numbers(l));
    if (out.back().size() != r.tasks().size())
      l.fail("has " + std::to_string(out.back().size()) + " tasks, not " + std::to_string(r.tasks().size()));
  }
  return out;
}

std::string audit_markdown(const Report& r, const Field& section, const std::vector<std::string>& charts) {
  const std::vector<std::string> layers = strings(section.at("layers"));
  Table table({"method", "mean residual", "worst residual", "worst task", "worst layer", "task with the largest mean"},
              "lrrlll");
  for (const MethodRow& m : r.ordered(section.at("rows"))) {
    if (!m.row) continue;
    const auto matrix = residual_matrix(r, *m.row, layers.size());
    double sum = 0, worst = -1;
    size_t count = 0, worst_layer = 0, worst_task = 0;
    std::vector<double> task_sum(r.tasks().size(), 0.0);
    for (size_t l = 0; l < matrix.size(); ++l)
      for (size_t t = 0; t < matrix[l].size(); ++t) {
        if (!matrix[l][t]) continue;
        const double v = *matrix[l][t];
        sum += v, task_sum[t] += v, ++count;
        if (v > worst) worst = v, worst_layer = l, worst_task = t;
      }
    if (count == 0) continue;
    const size_t hardest = static_cast<size_t>(std::max_element(task_sum.begin(), task_sum.end()) - task_sum.begin());
    table.add({m.label, fixed(sum / static_cast<double>(count), 4), fixed(worst, 4), r.tasks()[worst_task],
               short_layer(layers[worst_layer]), r.tasks()[hardest]});
  }
  std::ostringstream s;
  s << "\n## Merge audit: regression residuals\n\nPer linear layer and task, the relative regression residual of the "
       "merged layer on the task's calibration inputs, tr((W - W_t) G_t (W - W_t)^T) / tr(W_t G_t W_t^T), from the "
       "merge_report.json of each closed-form method's chosen merge (`amalgam audit` prints it).\n\n"
    << table.str() << chart_link("residuals", "Regression residuals per layer and task", charts);
  return s.str();
}

// ---- Charts ---------------------------------------------------------------------------------

struct Chart {
  std::string name, dat, gp;
};

// A gnuplot single-quoted string: '' is its one escape.
std::string gp_quote(std::string_view text) {
  std::string out = "'";
  for (char ch : text) out += ch == '\'' ? std::string("''") : std::string(1, (ch == '\n' || ch == '\r') ? ' ' : ch);
  return out + "'";
}

// A label in a .dat file: gnuplot reads a double-quoted field as one column and knows no
// escape in it, so a '"' becomes a "'".
std::string dat_quote(std::string_view text) {
  std::string out = "\"";
  for (char ch : text) out += ch == '"' ? '\'' : (ch == '\n' || ch == '\r') ? ' ' : ch;
  return out + "\"";
}

std::string dat_number(Value v) {
  if (!v || !std::isfinite(*v)) return "NaN";  // `set datafile missing NaN`: no bar, no point
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", *v);
  return buf;
}

// Colours (Tableau 10, then six darker ones) and point shapes, by a method's place in `methods`.
constexpr const char* kLineTypes =
    "set linetype 1 lc rgb '#1f77b4' lw 2 pt 7 ps 1.2\n"
    "set linetype 2 lc rgb '#ff7f0e' lw 2 pt 5 ps 1.2\n"
    "set linetype 3 lc rgb '#2ca02c' lw 2 pt 9 ps 1.4\n"
    "set linetype 4 lc rgb '#d62728' lw 2 pt 11 ps 1.4\n"
    "set linetype 5 lc rgb '#9467bd' lw 2 pt 13 ps 1.4\n"
    "set linetype 6 lc rgb '#8c564b' lw 2 pt 7 ps 1.2\n"
    "set linetype 7 lc rgb '#e377c2' lw 2 pt 5 ps 1.2\n"
    "set linetype 8 lc rgb '#7f7f7f' lw 2 pt 9 ps 1.4\n"
    "set linetype 9 lc rgb '#bcbd22' lw 2 pt 11 ps 1.4\n"
    "set linetype 10 lc rgb '#17becf' lw 2 pt 13 ps 1.4\n"
    "set linetype 11 lc rgb '#393b79' lw 2 pt 15 ps 1.2\n"
    "set linetype 12 lc rgb '#637939' lw 2 pt 4 ps 1.2\n"
    "set linetype 13 lc rgb '#843c39' lw 2 pt 6 ps 1.2\n"
    "set linetype 14 lc rgb '#7b4173' lw 2 pt 8 ps 1.4\n"
    "set linetype 15 lc rgb '#8c6d31' lw 2 pt 10 ps 1.4\n"
    "set linetype 16 lc rgb '#000000' lw 2 pt 12 ps 1.4\n"
    "set linetype cycle 16\n";

std::string gp_preamble(const std::string& name, const std::string& title, const std::string& xlabel,
                        const std::string& ylabel) {
  return "# amalgam bench: " + name + ".png and " + name + ".svg from " + name +
         ".dat (written from report.json).\n"
         "# Re-plot in this folder with: gnuplot " +
         name +
         ".gp\n"
         "set encoding utf8\n"
         "set datafile missing NaN\n" +
         kLineTypes + "set title " + gp_quote(title) + "\nset xlabel " + gp_quote(xlabel) + "\nset ylabel " +
         gp_quote(ylabel) +
         "\nset key outside right top vertical\n"
         "set grid ytics lc rgb '#dddddd'\n"
         "set border 3\n"
         "set tics nomirror\n";
}

// The SVG, then the PNG of the same plot (pngcairo where this gnuplot has it). A multiplot
// cannot be replotted: its commands are written out again for the PNG.
std::string gp_outputs(const std::string& name, int width, int height, const std::string& plot,
                       bool multiplot = false) {
  const std::string size = " size " + std::to_string(width) + "," + std::to_string(height);
  const std::string look = " noenhanced font 'Sans,11' background rgb 'white'";
  return "set terminal svg" + size + " dynamic" + look + "\nset output " + gp_quote(name + ".svg") + "\n" + plot +
         "\nif (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo" + size + look +
         " } else { set terminal png" + size + " noenhanced background rgb 'white' }\nset output " +
         gp_quote(name + ".png") + "\n" + (multiplot ? plot : std::string("replot")) + "\nunset output\n";
}

struct Series {
  std::string label;
  std::string style;  // "lt 3" or "lc rgb '#ff7f0e'"
  std::vector<Value> values;
};

struct BarChart {
  std::string name, title, xlabel, ylabel;
  std::vector<std::string> categories;
  std::vector<Series> series;
  bool stacked = false;      // one bar per category with the series stacked, else a group of bars
  bool long_labels = false;  // categories are method labels: slanted so that they do not overlap
  std::string yrange = "[0:*]";
  int width = 1100, height = 500;
};

bool any_value(const std::vector<Value>& values) {
  return std::any_of(values.begin(), values.end(), [](const Value& v) { return v && std::isfinite(*v); });
}

// One row per category, one column per series; nothing when no series has a value.
std::optional<Chart> bars(BarChart b) {
  std::erase_if(b.series, [](const Series& s) { return !any_value(s.values); });
  if (b.series.empty() || b.categories.empty()) return std::nullopt;
  std::string dat = "# " + b.title + "\n# category";
  for (const Series& s : b.series) dat += " " + dat_quote(s.label);
  dat += "\n";
  for (size_t c = 0; c < b.categories.size(); ++c) {
    dat += dat_quote(b.categories[c]);
    for (const Series& s : b.series) dat.append(" ").append(dat_number(element(s.values, c)));
    dat += "\n";
  }
  std::string gp =
      gp_preamble(b.name, b.title, b.xlabel, b.ylabel) + "set style data histograms\n" +
      (b.stacked ? "set style histogram rowstacked\nset boxwidth 0.6\n" : "set style histogram clustered gap 1\n") +
      (b.long_labels ? "set xtics rotate by 30 right\n" : "") +
      "set style fill solid 0.85 border rgb '#333333'\nset xtics scale 0\nset yrange " + b.yrange + "\n";
  std::string plot = "plot ";
  for (size_t k = 0; k < b.series.size(); ++k)
    plot += std::string(k ? ", \\\n     ''" : gp_quote(b.name + ".dat")) + " using " + std::to_string(k + 2) +
            (k ? "" : ":xtic(1)") + " title " + gp_quote(b.series[k].label) + " " + b.series[k].style;
  return Chart{b.name, dat, gp + gp_outputs(b.name, b.width, b.height, plot)};
}

struct Curve {
  std::string label;
  size_t style = 1;
  std::vector<Value> x;
  std::vector<std::vector<Value>> columns;  // columns[0] is plotted; the rest are kept for the reader
};

// One data block per curve (gnuplot's `index`), so curves may have different x values.
std::optional<Chart> lines(const std::string& name, const std::string& title, const std::string& xlabel,
                           const std::string& ylabel, const std::string& column_names, std::vector<Curve> curves) {
  std::erase_if(curves, [](const Curve& c) { return c.columns.empty() || !any_value(c.columns[0]); });
  if (curves.empty()) return std::nullopt;
  std::vector<std::vector<Value>> xs;
  for (const Curve& c : curves) xs.push_back(c.x);
  const std::vector<double> ticks = union_of(xs);
  if (ticks.empty()) return std::nullopt;
  std::string dat = "# " + title + "\n# one block per method; columns: " + column_names + "\n";
  for (size_t i = 0; i < curves.size(); ++i) {
    dat += (i ? "\n\n# " : "# ") + dat_quote(curves[i].label) + "\n";
    for (size_t p = 0; p < curves[i].x.size(); ++p) {
      dat += dat_number(curves[i].x[p]);
      for (const auto& column : curves[i].columns) dat.append(" ").append(dat_number(element(column, p)));
      dat += "\n";
    }
  }
  std::string tics;
  for (double t : ticks) tics += (tics.empty() ? "" : ", ") + compact(t);
  std::string gp = gp_preamble(name, title, xlabel, ylabel) + "set style data linespoints\nset xtics (" + tics +
                   ")\nset xrange [" + compact(ticks.front() - 0.5) + ":" + compact(ticks.back() + 0.5) + "]\n";
  std::string plot = "plot ";
  for (size_t i = 0; i < curves.size(); ++i)
    plot += std::string(i ? ", \\\n     ''" : gp_quote(name + ".dat")) + " index " + std::to_string(i) +
            " using 1:2 title " + gp_quote(curves[i].label) + " lt " + std::to_string(curves[i].style);
  return Chart{name, dat, gp + gp_outputs(name, 950, 500, plot)};
}

// Per-method bars over `categories`, read from each row's `object_key` object.
std::vector<Series> method_series(const Report& r, const Field& rows, const std::string& object_key,
                                  const std::vector<std::string>& categories, const std::string& extra_key = "") {
  std::vector<Series> out;
  for (const MethodRow& m : r.ordered(rows)) {
    if (!m.row) continue;
    const Field values = m.row->at(object_key);
    Series s{m.label, "lt " + std::to_string(m.style), {}};
    for (const std::string& c : categories) s.values.push_back(number_at(values, c));
    if (!extra_key.empty()) s.values.push_back(number_at(*m.row, extra_key));
    out.push_back(std::move(s));
  }
  return out;
}

std::optional<Chart> accuracy_chart(const Report& r, const Field& section) {
  BarChart b{"accuracy", "In-domain test accuracy per task", "task", "accuracy (%)", r.tasks(), {}};
  b.categories.push_back("average");
  b.series = method_series(r, section.at("rows"), "accuracy", r.tasks(), "average");
  b.yrange = "[0:100]";
  return bars(b);
}

std::optional<Chart> corruptions_chart(const Report& r, const Field& section) {
  const std::vector<std::string> corruptions = strings(section.at("corruptions"));
  const auto severity = section.find("severity");
  BarChart b{"corruptions",
             "Average accuracy under corruptions" + (severity ? " (severity " + scalar(severity->value()) + ")" : ""),
             "corruption",
             "average accuracy (%)",
             corruptions,
             method_series(r, section.at("rows"), "average", corruptions)};
  b.yrange = "[0:100]";
  return bars(b);
}

std::optional<Chart> sequential_chart(const Report& r, const Field& section) {
  const size_t orders = section.at("orders").items().size();
  std::vector<Curve> curves;
  std::string names = "tasks_seen mean";
  for (size_t o = 0; o < orders; ++o) names += " order" + std::to_string(o + 1);
  for (const MethodRow& m : r.ordered(section.at("rows"))) {
    if (!m.row) continue;
    Curve c{m.label, m.style, numbers(m.row->at("tasks_seen")), {numbers(m.row->at("mean"))}};
    if (const auto normalized = m.row->find("normalized"))
      for (const Field& per_order : normalized->items()) c.columns.push_back(numbers(per_order));
    curves.push_back(std::move(c));
  }
  return lines("sequential",
               "Sequential merging: normalized accuracy, mean over " + std::to_string(orders) + " task orders",
               "tasks merged so far", "mean normalized accuracy (%)", names, std::move(curves));
}

std::optional<Chart> num_tasks_chart(const Report& r, const Field& section) {
  const std::vector<Value> sizes = numbers(section.at("sizes"));
  std::vector<Curve> curves;
  for (const MethodRow& m : r.ordered(section.at("rows")))
    if (m.row) curves.push_back({m.label, m.style, sizes, {numbers(m.row->at("mean"))}});
  return lines("num_tasks", "Normalized accuracy vs number of tasks merged (mean over subsets)",
               "number of tasks merged", "mean normalized accuracy (%)", "tasks mean", std::move(curves));
}

// Per method, its statistics and merge phases: wall time stacked ("cost_time"), peak memory
// side by side ("cost_memory").
std::vector<std::optional<Chart>> cost_charts(const Report& r, const Field& section) {
  std::vector<std::string> methods;
  std::vector<Value> stats_wall, merge_wall, stats_peak, merge_peak;
  for (const MethodRow& m : r.ordered(section.at("rows"))) {
    if (!m.row) continue;
    const auto stats = m.row->find("stats"), merge = m.row->find("merge");
    if (!stats && !merge) continue;
    methods.push_back(m.label);
    // Stacked bars: a phase that did not run adds nothing.
    stats_wall.push_back(stats ? number_at(*stats, "wall_seconds").value_or(0) : 0);
    merge_wall.push_back(merge ? number_at(*merge, "wall_seconds").value_or(0) : 0);
    stats_peak.push_back(stats ? mib(number_at(*stats, "peak_rss_bytes")) : Value());
    merge_peak.push_back(merge ? mib(number_at(*merge, "peak_rss_bytes")) : Value());
  }
  auto ran = [](const std::vector<Value>& v) {
    return std::any_of(v.begin(), v.end(), [](const Value& x) { return x && *x > 0; });
  };
  BarChart time{"cost_time", "Wall time per method: statistics + merge", "method", "wall time (s)", methods, {}};
  time.stacked = time.long_labels = true;
  time.width = 950;
  time.height = 550;
  if (ran(stats_wall)) time.series.push_back({"statistics", "lc rgb '#ff7f0e'", stats_wall});
  if (ran(merge_wall)) time.series.push_back({"merge", "lc rgb '#1f77b4'", merge_wall});
  BarChart memory{"cost_memory", "Peak resident memory per method", "method", "peak memory (MiB)", methods, {}};
  memory.series = {{"statistics", "lc rgb '#ff7f0e'", stats_peak}, {"merge", "lc rgb '#1f77b4'", merge_peak}};
  memory.long_labels = true;
  memory.width = 950;
  memory.height = 550;
  return {bars(time), bars(memory)};
}

// One panel per closed-form method, one line per task: the residual of each linear layer in
// the model's order, on a log scale; the x tics mark where each encoder block starts.
std::optional<Chart> residuals_chart(const Report& r, const Field& section) {
  const std::vector<std::string> layers = strings(section.at("layers"));
  std::vector<std::pair<std::string, std::vector<std::vector<Value>>>> panels;
  for (const MethodRow& m : r.ordered(section.at("rows")))
    if (m.row) panels.emplace_back(m.label, residual_matrix(r, *m.row, layers.size()));
  if (panels.empty() || layers.empty()) return std::nullopt;
  const std::string name = "residuals";
  std::string dat =
      "# Relative regression residual per linear layer and task\n# one block per method; columns: index "
      "layer";
  for (const std::string& t : r.tasks()) dat += " " + dat_quote(t);
  for (size_t p = 0; p < panels.size(); ++p) {
    dat += (p ? "\n\n# " : "\n# ") + dat_quote(panels[p].first) + "\n";
    for (size_t l = 0; l < layers.size(); ++l) {
      dat += std::to_string(l) + " " + dat_quote(short_layer(layers[l]));
      for (const Value& v : panels[p].second[l]) dat.append(" ").append(dat_number(v && *v > 0 ? v : Value()));
      dat += "\n";
    }
  }
  std::string tics;  // "block" tics where the block number before the first '.' changes
  std::string previous;
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string shortname = short_layer(layers[l]);
    const std::string block = shortname.substr(0, shortname.find('.'));
    if (block == previous) continue;
    previous = block;
    tics += (tics.empty() ? "" : ", ") + gp_quote(block) + " " + std::to_string(l);
  }
  std::string gp = gp_preamble(name, "", "linear layer (encoder block: q, k, v, out, fc1, fc2)", "relative residual") +
                   "set style data linespoints\nset logscale y\nset format y '%g'\nset xtics (" + tics +
                   ")\nset xrange [-0.5:" + compact(static_cast<double>(layers.size()) - 0.5) +
                   "]\nset key outside right top vertical\n";
  std::string plot = "set multiplot layout 1," + std::to_string(panels.size()) + " title " +
                     gp_quote("Regression residual of the merged layer on each task's calibration inputs") + "\n";
  for (size_t p = 0; p < panels.size(); ++p) {
    plot += "set title " + gp_quote(panels[p].first) + "\n";
    if (p + 1 < panels.size())
      plot += "unset key\n";
    else
      plot += "set key\n";
    plot += "plot ";
    for (size_t t = 0; t < r.tasks().size(); ++t)
      plot += std::string(t ? ", \\\n     ''" : gp_quote(name + ".dat")) + " index " + std::to_string(p) +
              " using 1:" + std::to_string(t + 3) + " title " + gp_quote(r.tasks()[t]) + " lt " +
              std::to_string(t + 1) + " ps 0.6";
    plot += "\n";
  }
  plot += "unset multiplot";
  return Chart{name, dat, gp + gp_outputs(name, 600 * static_cast<int>(panels.size()) + 150, 500, plot, true)};
}

// ---- Running gnuplot ------------------------------------------------------------------------

void plot(const Chart& chart, const fs::path& dir) {
  check_interrupt();
  write_text_file(dir / (chart.name + ".dat"), chart.dat);
  write_text_file(dir / (chart.name + ".gp"), chart.gp);
  const fs::path log = dir / (chart.name + ".log");
  ChildUsage run;
  try {
    // In `dir`: the .gp reads its .dat by relative name.
    run = run_child({"gnuplot", chart.name + ".gp"}, log, dir);
  } catch (const std::runtime_error& e) {
    std::error_code ec;
    fs::remove(log, ec);
    throw InputError("chart '" + chart.name + "': " + e.what() + " (install gnuplot-nox: scripts/setup-deps.sh)");
  }
  check_interrupt();  // Ctrl-C reaches gnuplot too: report the interrupt, not its exit status
  if (run.exit_code != 0)
    throw InputError("chart '" + chart.name + "': gnuplot exited with status " + std::to_string(run.exit_code) +
                     "; its messages are in " + log.string());
  for (const char* ext : {".svg", ".png"})
    if (!fs::exists(dir / (chart.name + ext)))
      throw InputError("chart '" + chart.name + "': gnuplot wrote no " + chart.name + ext + "; see " + log.string());
  if (fs::is_empty(log)) fs::remove(log);
}

}  // namespace

std::vector<std::string> render_bench_charts(const json& report, const fs::path& charts_dir) {
  const Report r(report);
  std::vector<std::optional<Chart>> charts;
  if (const auto s = r.section("in_domain")) charts.push_back(accuracy_chart(r, *s));
  if (const auto s = r.section("sequential")) charts.push_back(sequential_chart(r, *s));
  if (const auto s = r.section("num_tasks")) charts.push_back(num_tasks_chart(r, *s));
  if (const auto s = r.section("corruptions")) charts.push_back(corruptions_chart(r, *s));
  if (const auto s = r.section("cost"))
    for (auto& c : cost_charts(r, *s)) charts.push_back(std::move(c));
  if (const auto s = r.section("audit")) charts.push_back(residuals_chart(r, *s));
  std::vector<std::string> names;
  if (std::none_of(charts.begin(), charts.end(), [](const auto& c) { return c.has_value(); })) return names;
  fs::create_directories(charts_dir);
  const fs::path dir = fs::absolute(charts_dir);
  for (const auto& chart : charts) {
    if (!chart) continue;
    plot(*chart, dir);
    names.push_back(chart->name);
  }
  return names;
}

std::string render_bench_markdown(const json& report, const std::vector<std::string>& charts) {
  const Report r(report);
  std::string md = header_markdown(r);
  if (const auto s = r.section("in_domain")) md += in_domain_markdown(r, *s, charts);
  if (const auto s = r.section("unseen")) md += unseen_markdown(r, *s);
  if (const auto s = r.section("corruptions")) md += corruptions_markdown(r, *s, charts);
  if (const auto s = r.section("sequential")) md += sequential_markdown(r, *s, charts);
  if (const auto s = r.section("num_tasks")) md += num_tasks_markdown(r, *s, charts);
  if (const auto s = r.section("cost")) md += cost_markdown(r, *s, charts);
  if (const auto s = r.section("audit")) md += audit_markdown(r, *s, charts);
  return md;
}

}  // namespace amalgam
