"""PAI ElasticBatch's own POSIX inference loop (the inception/resnet example), its typos fixed.

A ``DataInputor`` generator calls ``get_next_slice()`` for each new slice; a ``DataWriter`` opens
``output_dir/<slice id>`` when the slice id changes and commits the *previous* slice only then; the
last slice is committed in ``close()``, after ``get_next_slice()`` raised OutOfRangeException. So
each worker asks for a slice while still holding the previous one uncommitted. The "model" reads
each file; every output line is the input's path relative to the input directory.

usage: pai_datawriter.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
env:   FILE_SLEEP   seconds of "inference" per file
       STARTED_LOG  directory: each worker process creates "<worker>.started" first
       DIE_AFTER_END  a marker file: the first worker to get OutOfRangeException while holding a
                      slice creates it and kills itself (SIGKILL) before committing that slice
"""

import os
import signal
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


class DataInputor:
    def __init__(self, pf_client, input_dir):
        self.pf_client = pf_client
        self.input_dir = input_dir

    def get_next_dataloader(self):
        filepath_slice = self.pf_client.get_next_slice()
        for filepath in filepath_slice:
            with open(filepath) as f:
                f.read()
            yield os.path.relpath(filepath, self.input_dir)


class DataWriter:
    def __init__(self, pf_client):
        self.pf_client = pf_client
        self.pre_slice_id = self.pf_client.get_slice_id()
        self.output_dir = self.pf_client.config.output_dir
        self.writer = None

    def write(self, data):
        new_slice_id = self.pf_client.get_slice_id()
        if self.pre_slice_id != new_slice_id:
            self._create_new_writer(new_slice_id)
            self.pre_slice_id = new_slice_id
        self.writer.write(f"{data}\n")

    def close(self):
        if all([self.pre_slice_id, self.writer]):
            self.writer.close()
            self.pf_client.commit_slice(self.pre_slice_id)

    def _create_new_writer(self, new_slice_id):
        self.close()
        out_file = os.path.join(self.output_dir, new_slice_id)
        self.writer = open(out_file, "w")


def main():
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")
    started_dir = os.environ.get("STARTED_LOG")
    if started_dir:
        open(os.path.join(started_dir, f"{worker}.started"), "w").close()
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    data_config = elastic_inference.PosixFileConfig(
        input_dir=input_dir, slice_size=slice_size, output_dir=output_dir, auto_create_output_dir=True)
    pf_client = elastic_inference.PosixFileClient(data_config)
    data_inputor = DataInputor(pf_client, input_dir)
    data_writer = DataWriter(pf_client)
    while True:
        try:
            dataloader = data_inputor.get_next_dataloader()
            for input_data in dataloader:
                time.sleep(sleep)
                data_writer.write(input_data)
        except aimaster.data.OutOfRangeException:
            marker = os.environ.get("DIE_AFTER_END")
            if marker and data_writer.writer is not None:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            data_writer.close()
            print("All file data have been processed.")
            break


if __name__ == "__main__":
    main()
