"""LLM batch inference: text generated for every prompt of a Parquet table, written exactly once.

    python examples/llm/batch_generate.py --write-sample prompts.parquet 1000   # sample prompts
    aimaster run -n 2 -- python examples/llm/batch_generate.py prompts.parquet generations/
    python examples/llm/batch_generate.py prompts.parquet generations/          # standalone

The input table has columns ``id BIGINT, prompt STRING`` (a Parquet file or directory, or an
``odps://`` table); the output (a Parquet directory, or an ``odps://`` table) gets one row per
prompt: ``id, text`` (the generated text), ``new_tokens``. Each worker claims a slice of rows, cuts it
into batches of prompts of similar length under a token budget (dynamic batching: few pad tokens,
large batches of short prompts, small batches of long ones), generates, and writes the slice's rows;
asking for the next slice commits them, exactly once, whatever is killed.

The model is ``tiny_lm.TinyDecoder``: a small decoder-only transformer with random weights and a
byte-level tokenizer, so this runs anywhere with no download. For a real model on GPUs, run one vLLM
engine per worker instead: see docs/llm.md and ``vllm_generate.py``.
"""

import argparse
import os
import sys
import time

import torch

import aimaster
import common_io
from aimaster import inference as elastic_inference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_lm import ByteTokenizer, generate, length_batches, load_model  # noqa: E402


def generate_slice(model, tokenizer, rows, args):
    """(id, text, new tokens) for each (id, prompt) row of a slice, batched by prompt length."""
    prompts = [p.decode("utf-8") if isinstance(p, bytes) else (p or "") for _, p in rows]
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    results = []
    for batch in length_batches(lengths, args.max_batch_tokens, args.max_batch_size):
        texts = generate(model, tokenizer, [prompts[i] for i in batch], max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature)
        results += [(rows[i][0], text, len(text.encode("utf-8"))) for i, text in zip(batch, texts)]
    return results


def write_sample(path: str, n: int) -> None:
    """A Parquet table of ``n`` prompts of varied length (1 to ~40 words), ids 0..n-1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = "the quick brown fox jumps over a lazy dog while batch inference keeps every GPU busy".split()
    prompts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 13) % 40)) for i in range(n)]
    pq.write_table(pa.table({"id": pa.array(range(n), pa.int64()), "prompt": prompts}), path)
    print(f"wrote {n} prompts to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_table", nargs="?")
    parser.add_argument("output_table", nargs="?")
    parser.add_argument("--slice-size", type=int, default=64, help="prompts per slice")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-batch-tokens", type=int, default=2048, help="rows x longest prompt, per batch")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy decoding")
    parser.add_argument("--write-sample", nargs=2, metavar=("PATH", "N"), help="write N sample prompts and exit")
    args = parser.parse_args()
    if args.write_sample:
        write_sample(args.write_sample[0], int(args.write_sample[1]))
        return
    if not args.input_table or not args.output_table:
        parser.error("INPUT_TABLE and OUTPUT_TABLE are required")
    torch.set_num_threads(1)  # one core per worker: run as many workers as cores (or one per GPU)

    tokenizer, model = ByteTokenizer(), load_model()
    client = elastic_inference.MaxComputeTableClient(elastic_inference.MaxComputeTableConfig(
        args.input_table, slice_size=args.slice_size, output_table=args.output_table))
    # A Parquet output takes its column names from the writer; a MaxCompute table has its own schema.
    names = None if args.output_table.startswith("odps://") else ["id", "text", "new_tokens"]
    writer = client.create_table_writer(col_names=names)
    prompts = 0
    t0 = time.monotonic()
    while True:
        try:
            table_path = client.get_next_slice()  # commits the previous slice's rows
        except aimaster.data.OutOfRangeException:
            break
        with common_io.table.TableReader(table_path, selected_cols="id,prompt") as reader:
            rows = reader.read(reader.end_pos - reader.start_pos)
        writer.write(generate_slice(model, tokenizer, rows, args), col_indices=(0, 1, 2))
        prompts += len(rows)
    writer.close()  # commits the last slice
    elapsed = time.monotonic() - t0
    print(f"generated text for {prompts} prompts in {elapsed:.1f}s ({prompts / max(elapsed, 1e-9):.1f} prompts/s)")


if __name__ == "__main__":
    main()
