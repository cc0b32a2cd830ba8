// `amalgam audit OUT/`: the merge report every merge writes (merge_report.json), as tables
// with the worst tensors first, or as JSON.
#include <iostream>

#include "cli/commands.h"
#include "merge/audit.h"

namespace amalgam::cli {

void add_audit_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("audit", "Explain a merge: its merge_report.json as tables, worst tensors first");
  struct Args {
    std::string path;
    size_t top = 12;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("output", a->path, "a merge's output directory (or its merge_report.json)")->required();
  cmd->add_option("--top", a->top, "rows per table (default 12)")->check(positive_number());
  cmd->add_flag("--json", a->json, "print the whole report as JSON");
  cmd->callback([a] {
    const nlohmann::json report = read_merge_report(a->path);
    if (a->json)
      std::cout << report.dump(2) << "\n";
    else
      std::cout << audit_tables(report, a->top);
  });
}

}  // namespace amalgam::cli
