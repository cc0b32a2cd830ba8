// `amalgam eval MODEL --task DIR --head HEAD [...]`: accuracy of a CLIP vision checkpoint
// with task heads on task splits.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "eval/evaluate.h"

namespace amalgam::cli {

namespace {

void print_result(const EvalResult& r) {
  std::printf("%s (%s, %lld examples): accuracy %.2f%%, loss %.4f, %.1f examples/s\n", r.task.c_str(), r.split.c_str(),
              static_cast<long long>(r.examples), 100.0 * r.accuracy, r.loss, r.examples_per_second);
  for (size_t c = 0; c < r.class_accuracy.size(); ++c)
    std::printf("  %-24s %6lld examples  %6.2f%%\n", r.class_names[c].c_str(),
                static_cast<long long>(r.class_examples[c]), 100.0 * r.class_accuracy[c]);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Accuracy of a CLIP vision checkpoint with task heads on task data");
  struct Args {
    std::string model, split = "test";
    std::vector<std::string> tasks, heads;
    EvalOptions options;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "checkpoint directory (CLIPVisionModel, ...WithProjection or CLIPModel)")
      ->required();
  cmd->add_option("--task", a->tasks, "task directory (repeat with --head for several)")->required();
  cmd->add_option("--head", a->heads, "head file for the --task at the same position")->required();
  cmd->add_option("--split", a->split, "split to evaluate (default test)");
  cmd->add_option("--batch-size", a->options.batch_size, "images per forward (default 256)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--max-examples", a->options.max_examples, "evaluate a seeded sample of this many (default all)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--seed", a->options.seed, "seed of the sample")->check(non_negative_number());
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress bar");
  cmd->callback([a] {
    if (a->tasks.size() != a->heads.size())
      throw InputError("eval: " + std::to_string(a->tasks.size()) + " --task but " + std::to_string(a->heads.size()) +
                       " --head; give one head per task");
    const std::unique_ptr<Model> model = open_model(a->model);
    image_input_of(*model, a->model);  // a language model has `amalgam lm eval`
    const ImageProcessorConfig preprocess = load_image_processor_config(a->model);
    nlohmann::ordered_json results = nlohmann::ordered_json::array();
    for (size_t i = 0; i < a->tasks.size(); ++i) {
      const TaskInfo task = read_task_info(a->tasks[i]);
      const TaskSplit split = load_split(a->tasks[i], task, a->split);
      const ClassifierHead head = ClassifierHead::load(a->heads[i]);
      const EvalResult r = evaluate(*model, preprocess, task, split, head, a->options);
      if (a->json)
        results.push_back(r.to_json());
      else
        print_result(r);
    }
    if (a->json) std::cout << nlohmann::ordered_json{{"model", a->model}, {"results", results}}.dump(2) << "\n";
  });
}

}  // namespace amalgam::cli
