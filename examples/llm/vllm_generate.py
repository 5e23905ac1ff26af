"""LLM batch inference with vLLM on GPUs: one engine per worker, aimaster balancing the prompts.

NOT RUN in this project's CI (it needs GPUs, ``pip install vllm`` and the model's weights); the
CPU-only ``batch_generate.py`` beside it is the tested version of the same program. See docs/llm.md.

    # one machine, 8 GPUs: 8 workers, one engine (one GPU) each
    aimaster run -n 8 -- python examples/llm/vllm_generate.py prompts.parquet generations/ \\
        --model Qwen/Qwen2.5-7B-Instruct
    # a 70B model over 4 GPUs per engine: 2 workers on 8 GPUs
    aimaster run -n 2 -- python examples/llm/vllm_generate.py prompts.parquet generations/ \\
        --model meta-llama/Llama-3.1-70B-Instruct --gpus-per-engine 4
    # more machines join the same job, each with its own engines
    aimaster join -n 8 --bundle join.json -- python examples/llm/vllm_generate.py ...

Input: a table with columns ``id BIGINT, prompt STRING``; output: ``id, text, new_tokens``, one row
per prompt, exactly once. Each worker claims a slice of prompts (``--slice-size``, large enough to
keep the engine's continuous batching full), hands the whole slice to ``LLM.generate`` and writes
the results; a fast engine simply takes more slices, a dead one's slice is redone elsewhere, and a
slow one's tail slice is copied speculatively. Each prompt is sampled with its own seed (its id), so
a slice done again generates the same text.
"""

import argparse
import os
import time


def pin_gpus(gpus_per_engine: int) -> None:
    """Give this worker its own GPUs (slot k gets GPUs k*g .. k*g+g-1), unless a launcher already did.

    Must run before anything imports torch or vllm: CUDA reads CUDA_VISIBLE_DEVICES once.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # Slurm, Ray or Kubernetes chose for us
        return
    slot = int(os.environ.get("AIMASTER_WORKER_SLOT", "0"))
    first = slot * gpus_per_engine
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(gpus_per_engine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_table")
    parser.add_argument("output_table")
    parser.add_argument("--model", required=True, help="a Hugging Face model id or a local directory")
    parser.add_argument("--gpus-per-engine", type=int, default=1, help="tensor parallelism of each engine")
    parser.add_argument("--slice-size", type=int, default=512, help="prompts per slice")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    args = parser.parse_args()
    pin_gpus(args.gpus_per_engine)

    from vllm import LLM, SamplingParams  # after pin_gpus

    import aimaster
    import common_io
    from aimaster import inference as elastic_inference

    llm = LLM(model=args.model, tensor_parallel_size=args.gpus_per_engine,
              gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
    client = elastic_inference.MaxComputeTableClient(elastic_inference.MaxComputeTableConfig(
        args.input_table, slice_size=args.slice_size, output_table=args.output_table))
    names = None if args.output_table.startswith("odps://") else ["id", "text", "new_tokens"]
    writer = client.create_table_writer(col_names=names)
    done, t0 = 0, time.monotonic()
    while True:
        try:
            table_path = client.get_next_slice()  # commits the previous slice's rows
        except aimaster.data.OutOfRangeException:
            break
        with common_io.table.TableReader(table_path, selected_cols="id,prompt") as reader:
            rows = reader.read(reader.end_pos - reader.start_pos)
        prompts = [p.decode("utf-8") if isinstance(p, bytes) else (p or "") for _, p in rows]
        params = [SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                 seed=row_id) for row_id, _ in rows]
        outputs = llm.generate(prompts, params, use_tqdm=False)  # one output per prompt, in order
        writer.write([(row_id, out.outputs[0].text, len(out.outputs[0].token_ids))
                      for (row_id, _), out in zip(rows, outputs)], col_indices=(0, 1, 2))
        done += len(rows)
    writer.close()  # commits the last slice
    elapsed = time.monotonic() - t0
    print(f"generated for {done} prompts in {elapsed:.0f}s ({done / max(elapsed, 1e-9):.1f} prompts/s)")


if __name__ == "__main__":
    main()
