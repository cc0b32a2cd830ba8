// `amalgam mass build CONFIG.yaml -o BUNDLE/`: a MASS bundle (low-rank task vectors, the
// first-pass TSV-M model, heads, router config).
// `amalgam mass eval BUNDLE --task DIR [...]`: routed accuracy and routing accuracy.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "mass/bundle.h"
#include "mass/config.h"
#include "mass/mass_eval.h"

namespace amalgam::cli {

namespace {

std::string ratio(uint64_t part, uint64_t whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fx", whole ? static_cast<double>(part) / static_cast<double>(whole) : 0.0);
  return buf;
}

// Sizes against the base: what the bundle adds to a base that is kept anyway, and what
// keeping every fine-tune would take instead.
void print_sizes(const mass::BundleSizes& s, size_t tasks) {
  std::fprintf(
      stderr,
      "amalgam: mass: base %s; factors %s (%s base), first pass %s, heads %s; base + bundle %s (%s base) "
      "against %zu fine-tunes %s\n",
      human_bytes(static_cast<double>(s.base)).c_str(), human_bytes(static_cast<double>(s.factors)).c_str(),
      ratio(s.factors, s.base).c_str(), human_bytes(static_cast<double>(s.first_pass)).c_str(),
      human_bytes(static_cast<double>(s.heads)).c_str(), human_bytes(static_cast<double>(s.base + s.bundle())).c_str(),
      ratio(s.base + s.bundle(), s.base).c_str(), tasks, human_bytes(static_cast<double>(s.all_finetunes)).c_str());
}

void add_mass_build_command(CLI::App& mass) {
  auto* cmd = mass.add_subcommand("build", "Build a MASS bundle: low-rank task vectors, first-pass model, router");
  struct Args {
    std::string config, output;
    bool force = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("config", a->config, "MASS config (YAML: base_model, models with heads, parameters)")->required();
  cmd->add_option("-o,--output", a->output, "bundle directory to create")->required();
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->add_flag("-q,--quiet", a->quiet, "no progress or summary");
  cmd->callback([a] {
    const mass::MassConfig config = mass::load_mass_config(a->config);
    const mass::BuildSummary s = mass::build_bundle(config, {a->output, a->force, a->quiet});
    if (a->quiet) return;
    std::fprintf(stderr,
                 "amalgam: mass: %zu tasks, %lld matrices factored, %lld tensors kept whole, routing on block %lld "
                 "fc1, in %.2f s -> %s\n",
                 s.info.tasks.size(), static_cast<long long>(s.tensors_factored),
                 static_cast<long long>(s.tensors_whole), static_cast<long long>(s.info.router.layer), s.seconds,
                 a->output.c_str());
    print_sizes(s.info.sizes, s.info.tasks.size());
  });
}

void print_result(const mass::MassEvalResult& r) {
  std::string sizes;
  for (const auto& [size, count] : r.set_sizes)
    sizes += (sizes.empty() ? "" : ", ") + std::to_string(size) + ": " + std::to_string(count);
  char routing[32] = "n/a";
  if (r.routing_accuracy) std::snprintf(routing, sizeof routing, "%.2f%%", 100.0 * *r.routing_accuracy);
  std::printf(
      "%s (%s, %lld examples, route %s, head %s): accuracy %.2f%%, routing accuracy %s, tasks selected {%s}, "
      "%lld sets, %.1f examples/s\n",
      r.task.c_str(), r.split.c_str(), static_cast<long long>(r.examples), to_string(r.scope).c_str(),
      to_string(r.head_rule).c_str(), 100.0 * r.accuracy, routing, sizes.c_str(),
      static_cast<long long>(r.distinct_sets), r.examples_per_second);
}

void add_mass_eval_command(CLI::App& mass) {
  auto* cmd = mass.add_subcommand("eval", "Routed accuracy and routing accuracy of a MASS bundle on task data");
  struct Args {
    std::string bundle, split = "test", route = "sample", head_rule = "true";
    std::vector<std::string> tasks;
    mass::MassEvalOptions options;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("bundle", a->bundle, "bundle directory (amalgam mass build)")->required();
  cmd->add_option("--task", a->tasks, "task directory (repeat for several)")->required();
  cmd->add_option("--split", a->split, "split to evaluate (default test)");
  cmd->add_option("--route", a->route, "routing decision per image (sample) or per batch from mean residuals (batch)")
      ->check(CLI::IsMember({"sample", "batch"}));
  cmd->add_option("--head-rule", a->head_rule,
                  "true: the task's own head; max-logit: the selected head with the largest logit; router: the "
                  "top-routed task's head (default true)")
      ->check(CLI::IsMember({"true", "max-logit", "router"}));
  cmd->add_option("--batch-size", a->options.batch_size, "images per forward (default 32)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--max-examples", a->options.max_examples, "evaluate a seeded sample of this many (default all)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--seed", a->options.seed, "seed of the sample");
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress bar");
  cmd->callback([a] {
    a->options.scope = a->route == "batch" ? mass::RouteScope::Batch : mass::RouteScope::Sample;
    a->options.head_rule = a->head_rule == "max-logit" ? mass::HeadRule::MaxLogit
                           : a->head_rule == "router"  ? mass::HeadRule::Router
                                                       : mass::HeadRule::True;
    mass::MassRuntime runtime(a->bundle);
    nlohmann::ordered_json results = nlohmann::ordered_json::array();
    for (const std::string& dir : a->tasks) {
      const TaskInfo task = read_task_info(dir);
      const TaskSplit split = load_split(dir, task, a->split);
      const mass::MassEvalResult r = mass::evaluate_mass(runtime, task, split, a->options);
      if (a->json)
        results.push_back(r.to_json(runtime.info().tasks));
      else
        print_result(r);
    }
    const mass::BundleSizes& s = runtime.info().sizes;
    if (a->json) {
      std::cout << nlohmann::ordered_json{{"bundle", a->bundle},
                                          {"router", runtime.router().to_json()},
                                          {"sizes", s.to_json()},
                                          {"bundle_to_base",
                                           s.base ? static_cast<double>(s.bundle()) / static_cast<double>(s.base)
                                                  : 0.0},
                                          {"models_built", runtime.models_built()},
                                          {"results", results}}
                       .dump(2)
                << "\n";
    } else {
      std::printf("bundle: base %s, bundle %s (%s base; factors %s), %zu fine-tunes %s; %zu models built\n",
                  human_bytes(static_cast<double>(s.base)).c_str(),
                  human_bytes(static_cast<double>(s.bundle())).c_str(), ratio(s.bundle(), s.base).c_str(),
                  ratio(s.factors, s.base).c_str(), runtime.info().tasks.size(),
                  human_bytes(static_cast<double>(s.all_finetunes)).c_str(), runtime.models_built());
    }
  });
}

}  // namespace

void add_mass_command(CLI::App& app) {
  auto* mass = app.add_subcommand("mass", "MASS: routed merging through low-rank task subspaces (build, eval)");
  mass->require_subcommand(1);
  add_mass_build_command(*mass);
  add_mass_eval_command(*mass);
}

}  // namespace amalgam::cli
