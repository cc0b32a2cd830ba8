// The subcommands of the amalgam executable. Each adds itself to the CLI11 app; main()
// owns error handling and exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace amalgam::cli {

void add_inspect_command(CLI::App& app);
void add_merge_command(CLI::App& app);  // also adds `methods`
void add_generate_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_task_command(CLI::App& app);
void add_zoo_command(CLI::App& app);
void add_stats_command(CLI::App& app);
void add_mass_command(CLI::App& app);
void add_audit_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_lm_command(CLI::App& app);
void add_extract_lora_command(CLI::App& app);

// "5GB", "500MB", "2GiB", "1000" -> bytes; InputError otherwise.
uint64_t parse_byte_size(const std::string& text);

// Checks of numeric options whose messages read well ("--top: must be at least 1, got '0'");
// CLI11's PositiveNumber prints a range up to 1.8e308, and an unsigned option takes "-1" as
// 2^64 - 1 unless told otherwise.
CLI::Validator positive_number();
CLI::Validator non_negative_number();

// "1.5 GB"-style sizes for humans (decimal units, as model hubs show them).
std::string human_bytes(double bytes);

}  // namespace amalgam::cli
