"""LitServe peer of memserve's VMA classify: the same checkpoint, each session's exemplar embeddings
h(m_a) cached in Redis, served the way a LitServe user would build it (LitAPI, dynamic batching, one
worker). Per batch: one pipelined GET of every session's embeddings and labels, one batched h_q pass,
q(a|x) summed per label. No likelihood bound, no novelty, no top addresses: a lower bound on the work.

Sessions are made at start-up: SESSIONS x (WAYS x SHOTS) Omniglot evaluation drawings (DATA).
Run: python litserve_vma.py PORT [max_batch]   env: MAIN (memserve checkout), DATA (the folder holding omniglot/)
Request: POST /predict {"sid": "0".."15", "pixels": 28x28 of 0/1} -> {"label": ..., "scores": {...}}
"""
import os, sys
import numpy as np
import litserve as ls
import redis
import torch

MAIN = os.environ.get("MAIN", os.getcwd()); sys.path.insert(0, MAIN)
from models.checkpoint import load_checkpoint  # noqa: E402
from models.vma import similarity  # noqa: E402

SESSIONS, WAYS, SHOTS = 16, 8, 4


class VmaClassify(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        self.model, _ = load_checkpoint("vma-omniglot", os.path.join(MAIN, "checkpoints"))
        self.r = redis.Redis.from_url("redis://127.0.0.1:6379/12")
        ev = np.load(os.path.join(os.environ["DATA"], "omniglot/images_evaluation_28x28.npz"))
        keys = sorted(ev.keys()); rng = np.random.default_rng(0)
        for s in range(SESSIONS):
            picked = rng.choice(len(keys), WAYS, replace=False)
            m = np.concatenate([(255 - ev[keys[k]].reshape(20, 28, 28)[:SHOTS]) / 255.0 for k in picked]).astype(np.float32)
            with torch.inference_mode():
                emb = self.model.memory_embedding(torch.from_numpy(m)[:, None]).numpy().astype(np.float32)
            labels = np.repeat(np.arange(WAYS), SHOTS).astype(np.int32)
            self.r.set(f"litv:{{{s}}}:emb", emb.tobytes()); self.r.set(f"litv:{{{s}}}:lab", labels.tobytes())

    def decode_request(self, request):
        return str(request["sid"]), np.asarray(request["pixels"], np.float32).reshape(28, 28)

    def predict(self, batch):
        pipe = self.r.pipeline(transaction=False)
        for sid, _ in batch:
            pipe.get(f"litv:{{{sid}}}:emb"); pipe.get(f"litv:{{{sid}}}:lab")
        got = pipe.execute()
        x = torch.from_numpy(np.stack([(p > 0.5).astype(np.float32) for _, p in batch]))[:, None]
        with torch.inference_mode():
            e = self.model.query_embedding(x)  # (B, D)
            out = []
            for i in range(len(batch)):
                emb = torch.from_numpy(np.frombuffer(got[2 * i], np.float32).reshape(-1, e.shape[1]).copy())
                lab = np.frombuffer(got[2 * i + 1], np.int32)
                q = similarity(emb, e[i:i + 1]).softmax(-1)[0].numpy()
                scores = {f"c{c}": float(q[lab == c].sum()) for c in np.unique(lab)}
                out.append({"label": max(scores, key=scores.get), "scores": scores})
        return out

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    port = int(sys.argv[1]); mb = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    api = VmaClassify(max_batch_size=mb, batch_timeout=0.002)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(port=port, generate_client_file=False, log_level="warning")
