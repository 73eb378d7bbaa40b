"""LitServe peer of memserve's stream endpoint: the same MemNet checkpoint, the same per-session state
in Redis, served the way a LitServe user would build it (LitAPI, dynamic batching, one worker process).

Per batch: one pipelined GET of every session's state blob, one batched in-place MemNet step, one
pipelined SET. It gives none of memserve's guarantees (two requests of one session in one batch race,
nothing is exactly-once, a crash loses the batch), so it is a lower bound on the work a peer does.

Run: python litserve_memnet.py PORT [max_batch]   (MAIN: the memserve checkout, default the current folder)
Request: POST /predict {"sid": "...", "values": [[x]]} -> {"predictions": [[y]]}
"""
import os, sys
import numpy as np
import litserve as ls
import redis
import torch

sys.path.insert(0, os.environ.get("MAIN", os.getcwd()))
from models.checkpoint import load_checkpoint  # noqa: E402
from models.memnet import STATS_ROWS, MemNetState  # noqa: E402


class MemNetStream(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        self.model, card = load_checkpoint("memnet-mackey-glass", os.path.join(os.environ.get("MAIN", os.getcwd()), "checkpoints"))
        c = self.model.config
        self.mu = float(card["normalization"]["mean"][0]); self.sd = float(card["normalization"]["std"][0])
        self.shapes = [("h", (c.hidden_dim,)), ("keys", (c.capacity, c.key_dim)), ("values", (c.capacity, c.value_dim)), ("stats", (STATS_ROWS, c.input_dim)), ("cp", (2,))]
        self.size = sum(int(np.prod(s)) for _, s in self.shapes)
        self.r = redis.Redis.from_url("redis://127.0.0.1:6379/13")

    def decode_request(self, request):
        return request["sid"], float(request["values"][-1][0])

    def _unpack(self, blob):
        a = np.frombuffer(blob, np.float32) if blob else np.zeros(self.size, np.float32)
        out, o = {}, 0
        for name, shape in self.shapes:
            n = int(np.prod(shape)); out[name] = a[o:o + n].reshape(shape); o += n
        return out

    def predict(self, batch):
        sids = [s for s, _ in batch]
        pipe = self.r.pipeline(transaction=False)
        for s in sids:
            pipe.get(f"litm:{{{s}}}:state")
        parts = [self._unpack(b) for b in pipe.execute()]
        st = MemNetState(
            h=torch.from_numpy(np.stack([p["h"] for p in parts])),
            keys=torch.from_numpy(np.stack([p["keys"] for p in parts])),
            values=torch.from_numpy(np.stack([p["values"] for p in parts])),
            count=torch.from_numpy(np.stack([p["cp"][0] for p in parts]).astype(np.int64)),
            pos=torch.from_numpy(np.stack([p["cp"][1] for p in parts]).astype(np.int64)),
            stats=torch.from_numpy(np.stack([p["stats"] for p in parts]).copy()),
        )
        x = torch.tensor([[(v - self.mu) / self.sd] for _, v in batch], dtype=torch.float32)
        with torch.inference_mode():
            y, _std = self.model.step_(x, st)
        pipe = self.r.pipeline(transaction=False)
        for i, s in enumerate(sids):
            blob = np.concatenate([st.h[i].numpy().ravel(), st.keys[i].numpy().ravel(), st.values[i].numpy().ravel(), st.stats[i].numpy().ravel(),
                                   np.array([st.count[i].item(), st.pos[i].item()], np.float32)])
            pipe.set(f"litm:{{{s}}}:state", blob.astype(np.float32).tobytes())
        pipe.execute()
        return [[[float(v) * self.sd + self.mu]] for v in y[:, 0]]

    def encode_response(self, output):
        return {"predictions": output}


if __name__ == "__main__":
    port = int(sys.argv[1]); mb = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    api = MemNetStream(max_batch_size=mb, batch_timeout=0.002)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(port=port, generate_client_file=False, log_level="warning")
