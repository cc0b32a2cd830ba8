// `amalgam train MODEL --task DIR --head HEAD -o OUT`: fine-tunes a vision encoder (a family
// with a training graph: CLIP's) on a task through a frozen head (the head is not changed). `--probe -o HEAD`: fits a
// linear probe head on the frozen encoder's features instead; `--prototype-head -o HEAD` makes a zero-shot-like head
// from class prototypes (train/prototype_head.h), as the zoo makes its own.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "io/atomic_output.h"
#include "io/json_file.h"
#include "train/prototype_head.h"
#include "train/trainer.h"

namespace amalgam::cli {

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Fine-tune a vision encoder through a frozen head, or fit a probe head");
  struct Args {
    std::string model, task, head, output, split = "train";
    bool probe = false, prototype = false, force = false;
    train::TrainOptions options;
    train::PrototypeOptions prototypes;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "checkpoint directory to start from")->required();
  cmd->add_option("--task", a->task, "task directory")->required();
  cmd->add_option("--head", a->head, "head file (frozen) for fine-tuning");
  cmd->add_flag("--probe", a->probe, "fit a linear probe head on frozen features; -o names the head file");
  cmd->add_flag("--prototype-head", a->prototype,
                "make a zero-shot-like head from class prototypes (no training); -o names the head file");
  cmd->add_option("--per-class", a->prototypes.per_class, "images per class prototype (default 16)")
      ->check(CLI::Range(1, 1'000'000));
  cmd->add_option("--logit-scale", a->prototypes.logit_scale, "prototype head's logit scale (default 100)")
      ->check(positive_number());
  cmd->add_option("-o,--output", a->output,
                  "output checkpoint directory (or head file with --probe or --prototype-head)")
      ->required();
  cmd->add_option("--split", a->split, "training split (default train)");
  cmd->add_option("--epochs", a->options.epochs, "passes over the split")->check(CLI::Range(1, 100000));
  cmd->add_option("--batch-size", a->options.batch_size, "images per step")->check(CLI::Range(1, 65536));
  cmd->add_option("--lr", a->options.learning_rate, "peak learning rate (AdamW)")->check(positive_number());
  cmd->add_option("--weight-decay", a->options.weight_decay, "decoupled weight decay")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--max-shift", a->options.max_shift, "random translation in pixels (0: none)")
      ->check(CLI::Range(0, 64));
  cmd->add_option("--seed", a->options.seed, "seed of shuffling, augmentation and head initialisation")
      ->check(non_negative_number());
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress bar");
  cmd->callback([a] {
    if (int(a->probe) + int(a->prototype) + int(!a->head.empty()) != 1)
      throw InputError(
          "train: give one of --head HEAD (fine-tune through it), --probe (fit a head) or --prototype-head (make one)");
    const bool makes_head = a->probe || a->prototype;
    // Locked and checked before training, not after it.
    const auto claim =
        claim_output(a->output, a->force, makes_head ? AtomicOutput::Kind::File : AtomicOutput::Kind::Directory);
    std::unique_ptr<Model> model = open_model(a->model);
    const int64_t channels = image_input_of(*model, a->model).channels;
    const ImageProcessorConfig preprocess = load_image_processor_config(a->model);
    const TaskInfo task = read_task_info(a->task);
    const TaskSplit split = load_split(a->task, task, a->split);
    if (makes_head) {
      ClassifierHead head =
          a->probe ? train::fit_probe(*model, split.images, split.labels, task.num_classes(), preprocess, a->options)
                   : train::prototype_head(*model, split.images, split.labels, task.num_classes(), preprocess,
                                           a->prototypes, a->task);
      head.task = task.name;
      head.class_names = task.classes;
      head.save(a->output, a->force);
      std::cerr << "amalgam: wrote a " << (a->probe ? "probe" : "prototype") << " head for '" << task.name << "' to "
                << a->output << "\n";
      return;
    }
    ClassifierHead head = ClassifierHead::load(a->head);
    if (head.dim() != model->head_width() || head.classes() != task.num_classes())
      throw InputError(a->head, "head is [" + std::to_string(head.classes()) + ", " + std::to_string(head.dim()) +
                                    "], the model and task need [" + std::to_string(task.num_classes()) + ", " +
                                    std::to_string(model->head_width()) + "]");
    const auto report = train::train_encoder(
        model, head, false, split.size(),
        train::classification_batches(split.images, split.labels, preprocess, channels, a->options.max_shift),
        a->options);
    model->save(a->output, DType::F32, a->force, preprocess.to_json());
    std::fprintf(stderr, "amalgam: %lld steps in %.1f s (%.0f images/s), last epoch loss %.4f; wrote %s\n",
                 static_cast<long long>(report.steps), report.seconds, report.images_per_second,
                 report.epoch_loss.empty() ? 0.0 : report.epoch_loss.back(), a->output.c_str());
  });
}

}  // namespace amalgam::cli
