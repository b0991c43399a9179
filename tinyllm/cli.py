"""The ``tinyllm`` command: train, sample and evaluate a GPT on a text corpus.

    tinyllm train --preset shakespeare-char --out-dir runs/shakespeare
    tinyllm sample --out-dir runs/shakespeare --prompt "ROMEO:" --num-tokens 300
    tinyllm eval --out-dir runs/shakespeare
    tinyllm export --out-dir runs/shakespeare --to models/shakespeare    # a Hugging Face dir
    tinyllm quantize --out-dir runs/shakespeare && tinyllm eval --out-dir runs/shakespeare --int8
    tinyllm train --init-from models/shakespeare --data more.txt --out-dir runs/more

The options of ``train`` are the fields of ``TrainConfig`` (``tinyllm.config``: built from the
dataclass, never ``exec``-ed from a config file; each with its help line and valid range); a
preset fills them, and flags override it. The loop is ``tinyllm.loop`` (its helpers: setup,
resume, Ctrl-C, health, ``tinyllm.trainer``), the run directory's contract ``tinyllm.rundir``,
sampling and evaluation ``tinyllm.inference``, export and ``--init-from`` ``tinyllm.hf``.

Errors: a bad flag is argparse's (usage and one line, exit 2); anything the library refuses
(a corrupted checkpoint, a corpus that is not UTF-8, a run directory in use) is printed by
``run`` as ``tinyllm <command>: error: <message>``, exit 1, without a traceback (``--debug`` or
``TINYLLM_DEBUG=1`` shows it); Ctrl-C exits 130.
"""
import argparse
import contextlib
import dataclasses
import os
import sys

import numpy as np

import tinyllm as tl
from tinyllm import distributed, hf, rundir
from tinyllm.config import (MUTABLE_ON_RESUME, PRESETS, Check, TrainConfig, flag_text,
                            saved_config)
from tinyllm.data.corpora import get_batch, read_text
from tinyllm.inference import (SAMPLE_CHECKS, evaluate, open_run, quantize_run, run_corpus,
                               sample)
from tinyllm.loop import train
from tinyllm.rundir import RunDirError
from tinyllm.trainer import TrainError


# ----------------------------------------------------------------------------------------------
# command line built from the dataclass

def _arg(check):
    """An argparse ``type`` from a Check: a value out of range is argparse's own error (exit 2,
    one line: ``argument --batch-size: expected an integer >= 1, got '0'``)."""
    def parse(text):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.describe()
    return parse


def _add_config_args(parser, cls):
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        check, help = f.metadata["check"], f.metadata["help"]
        shown = ("on" if f.default else "off") if f.type in (bool, "bool") else f.default
        help = f"{help} (default: {shown})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help)
        elif check.choices:
            parser.add_argument(flag, choices=check.choices, default=None, help=help)
        else:
            parser.add_argument(flag, type=_arg(check), default=None, help=help,
                                metavar=f.name.upper())


def _config_from_args(args):
    """The run's TrainConfig: a preset, then the flags given. With --resume the run's saved
    config comes first, and of the preset only the settings a resumed run may change
    (``MUTABLE_ON_RESUME``: max_iters, evaluation, checkpoints, ...): applied whole, it would
    undo flags the run began with (``--preset tiny --n-layer 2``). Flags given now are checked
    against the saved config by ``train``. A new run with
    --init-from DIR takes the model's settings (architecture, tokenizer) from DIR, over the
    preset's; a flag that sets one otherwise is an error."""
    values = {}
    resume = getattr(args, "resume", False)
    if resume:
        out_dir = args.out_dir if args.out_dir is not None else TrainConfig.out_dir
        values.update(dataclasses.asdict(saved_config(rundir.read_log(out_dir)["config"])))
    preset = PRESETS[args.preset] if args.preset else {}
    if resume:                  # the run's model and data stand; the preset's schedule applies
        preset = {k: v for k, v in preset.items() if k in MUTABLE_ON_RESUME}
    values.update(preset)
    init_from = args.init_from or (None if resume else values.get("init_from"))
    fixed = {} if resume or not init_from else hf.train_settings(init_from)
    values.update(fixed)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is None:
            continue
        if f.name in fixed and v != fixed[f.name]:
            raise ValueError(f"--init-from {init_from} holds a model with "
                             f"{flag_text(f.name, fixed[f.name])}; {flag_text(f.name, v)} "
                             f"would build another (drop it: the model's settings come from "
                             f"there)")
        values[f.name] = v
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------

def _parser():
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true",
                       help="show the Python traceback of an error (also TINYLLM_DEBUG=1)")
    parser = argparse.ArgumentParser(prog="tinyllm", description=__doc__.split("\n\n")[0],
                                     parents=[debug])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a GPT on a corpus", parents=[debug])
    p_train.add_argument("--preset", choices=sorted(PRESETS), default=None,
                         help="a named configuration; flags given override it; with --resume "
                              "only its settings a resumed run may change (max-iters, "
                              "evaluation, checkpoints) (default: none)")
    p_train.add_argument("--resume", action="store_true",
                         help="continue the run in --out-dir with its saved settings")
    p_train.add_argument("--overwrite", action="store_true",
                         help="delete the run in --out-dir and start a new one there")
    p_train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_config_args(p_train, TrainConfig)

    def checked(name):
        return _arg(SAMPLE_CHECKS[name])
    p_sample = sub.add_parser("sample", help="generate text from a trained run", parents=[debug])
    p_sample.add_argument("--out-dir", required=True, help="the run to sample from")
    p_sample.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p_sample.add_argument("--num-tokens", type=checked("num_tokens"), default=300,
                          help="tokens to generate (default: 300)")
    p_sample.add_argument("--temperature", type=checked("temperature"), default=0.8,
                          help="softmax temperature, > 0; lower is more conservative "
                               "(default: 0.8)")
    p_sample.add_argument("--top-k", type=checked("top_k"), default=None,
                          help="sample among the k most likely tokens (default: all)")
    p_sample.add_argument("--top-p", type=checked("top_p"), default=None,
                          help="nucleus sampling: the smallest set holding this probability "
                               "mass, in (0, 1] (default: off)")
    p_sample.add_argument("--greedy", action="store_true",
                          help="always the most likely token (default: sample)")
    p_sample.add_argument("--num-beams", type=checked("num_beams"), default=1,
                          help="beam search with this many beams (default: 1, no beam search)")
    p_sample.add_argument("--length-penalty", type=checked("length_penalty"), default=0.0,
                          help="beam search: GNMT's alpha, hypotheses ranked by log P / "
                               "((5 + length) / 6)^alpha (default: 0, none)")
    p_sample.add_argument("--repetition-penalty", type=checked("repetition_penalty"),
                          default=1.0, help="CTRL's penalty on tokens already in the text; "
                                            "> 1 discourages repeats (default: 1, none)")
    p_sample.add_argument("--no-repeat-ngram-size", type=checked("no_repeat_ngram_size"),
                          default=0, help="never repeat an n-gram of this size (default: 0, off)")
    p_sample.add_argument("--seed", type=checked("seed"), default=0,
                          help="seed of the sampling (default: 0)")
    p_sample.add_argument("--int8", action="store_true",
                          help="the run's int8 model (written by tinyllm quantize)")
    p_eval = sub.add_parser("eval", help="loss and perplexity of a trained run", parents=[debug])
    p_eval.add_argument("--out-dir", required=True, help="the run to evaluate")
    p_eval.add_argument("--data", default=None,
                        help="a text file to score instead of the run's corpus (a copy of the "
                             "run's own corpus is recognised by its sha256 and split as in "
                             "training) (default: the run's corpus)")
    p_eval.add_argument("--split", choices=("train", "val"), default="val",
                        help="which split of the run's corpus (default: val)")
    p_eval.add_argument("--batches", type=_arg(Check(int, lo=1)), default=None,
                        help="a quick estimate from this many random batches instead of the "
                             "whole split (default: the whole split)")
    p_eval.add_argument("--seed", type=_arg(Check(int, lo=0)), default=0,
                        help="seed of the random batches of --batches (default: 0)")
    p_eval.add_argument("--int8", action="store_true",
                        help="the run's int8 model (written by tinyllm quantize)")
    p_quant = sub.add_parser("quantize", parents=[debug],
                             help="write the run's model with int8 weights (sample/eval --int8)")
    p_quant.add_argument("--out-dir", required=True, help="the run to quantize")
    p_quant.add_argument("--group-size", type=_arg(Check(int, lo=0)), default=64,
                         help="input features per scale; 0: one scale per output channel "
                              "(default: 64)")
    p_quant.add_argument("--force", action="store_true",
                         help="replace the run's int8 model if it has one")
    p_export = sub.add_parser("export", parents=[debug],
                              help="write a trained run as a Hugging Face model directory")
    p_export.add_argument("--out-dir", required=True, help="the run to export")
    p_export.add_argument("--to", required=True,
                          help="the model directory to write (config.json, model.safetensors, "
                               "tinyllm_tokenizer.json); must not exist or be empty")
    p_export.add_argument("--force", action="store_true",
                          help="replace a model directory already at --to")
    p_explain = sub.add_parser("explain-backward", parents=[debug],
                               help="step through the backward pass of a tiny GPT (or a run)")
    p_explain.add_argument("--out-dir", default=None,
                           help="a trained run to explain (default: a tiny fresh GPT)")
    positive = _arg(Check(int, lo=1))
    for flag, default, what in (("--n-layer", 1, "Transformer blocks"),
                                ("--n-head", 2, "attention heads"),
                                ("--n-embd", 16, "width of the residual stream"),
                                ("--block-size", 8, "context length"),
                                ("--batch-size", 2, "sequences in the batch")):
        p_explain.add_argument(flag, type=positive, default=default,
                               help=f"{what} of the tiny GPT (default: {default})")
    p_explain.add_argument("--seed", type=_arg(Check(int, lo=0)), default=0,
                           help="seed of the weights and the batch (default: 0)")
    p_explain.add_argument("--ops", nargs="*", default=None,
                           help="show only these ops (Softmax LayerNorm ...; 'leaf' for leaves) "
                                "(default: all)")
    p_explain.add_argument("--modules", nargs="*", default=None,
                           help="show only nodes in these modules (transformer.h.0.attn ...) "
                                "(default: all)")
    p_explain.add_argument("--steps", action="store_true",
                           help="print each step in full (upstream and local gradients, saved "
                                "arrays) instead of the table")
    p_explain.add_argument("--dot", default=None,
                           help="also write the graph (.dot; .svg/.png need Graphviz's dot) "
                                "(default: none)")
    p_explain.add_argument("--bisect", action="store_true",
                           help="check every node's backward against finite differences "
                                "(float64) and name the first that disagrees")
    p_explain.add_argument("--html", default=None, metavar="PAGE.html",
                           help="write the interactive backward explorer (one self-contained "
                                "page: the graph, each node's card, step-through, each node's "
                                "finite-difference check; float64) (default: none)")
    p_explain.add_argument("--plant-bug", default=None, metavar="OP",
                           help="for teaching: make OP's backward wrong (Softmax, LayerNorm, "
                                "...) and see where the finite-difference check disagrees "
                                "(default: none)")
    return parser


def main(argv=None):
    """Run one command (``argv`` as after ``tinyllm``); returns its result. Errors propagate
    as exceptions; ``run`` turns them into one line."""
    args = _parser().parse_args(argv)
    tl.backend.keep_freed_memory()       # the command owns the process: reuse freed pages
    if args.command != "explain-backward":          # that one steps through the references
        tl.kernels.prefer_impl("auto")   # the accelerators; TINYLLM_KERNELS=numpy: the references

    if args.command == "train":
        if distributed.launched_by_mpi() > 1:                              # under mpiexec
            return _train_rank(args)
        return train(_config_from_args(args), resume=args.resume, quiet=args.quiet,
                     overwrite=args.overwrite)
    if args.command == "sample":
        def stream(text):
            sys.stdout.write(text)
            sys.stdout.flush()
        text = sample(args.out_dir, args.prompt, args.num_tokens, args.temperature, args.top_k,
                      args.top_p, args.seed, args.greedy, num_beams=args.num_beams,
                      length_penalty=args.length_penalty,
                      repetition_penalty=args.repetition_penalty,
                      no_repeat_ngram_size=args.no_repeat_ngram_size, stream=stream,
                      int8=args.int8)
        sys.stdout.write("\n")
        return text
    if args.command == "explain-backward":
        return explain_backward(args)
    if args.command == "export":
        to = hf.export_run(args.out_dir, args.to, force=args.force)
        print(f"exported the run in {args.out_dir} to {to}: load it with transformers' "
              f"AutoModelForCausalLM.from_pretrained({str(to)!r}), or train on from it with "
              f"tinyllm train --init-from {to}")
        return to
    if args.command == "quantize":
        r = quantize_run(args.out_dir, args.group_size or None, force=args.force)
        print(f"wrote {r['path']}: the model's arrays {r['int8_bytes']:,} bytes, from "
              f"{r['float_bytes']:,} in float (embeddings and norms stay float); sample or "
              f"evaluate it with --int8")
        return r
    result = evaluate(args.out_dir, args.data, args.split, args.batches, args.seed,
                      int8=args.int8)
    print(f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f} | "
          f"{result['tokens']:,} tokens of {result['what']}")
    return result


def _world(args):
    """Under mpiexec: the communicator and the run's config. Rank 0 alone reads what the config
    comes from (a resumed run's log.json, an --init-from directory: they need not exist on the
    other hosts) and sends it; its error there is its to print, the others exit 1."""
    boot = distributed.create_communicator("mpi")
    if boot.rank == 0:
        try:
            cfg = _config_from_args(args)
        except BaseException as e:
            boot.bcast_object(("error", None))
            raise e
        boot.bcast_object(("config", cfg))
    else:
        kind, cfg = boot.bcast_object(None)
        if kind == "error":
            raise SystemExit(1)
    if cfg.backend == "cupy":
        if cfg.allreduce == "deterministic":
            raise ValueError("--allreduce deterministic sums on the host in rank order; with "
                             "--backend cupy the gradients are summed by NCCL, in its own "
                             "order (drop --allreduce, or train on the CPU)")
        from tinyllm.distributed.nccl import NCCLCommunicator
        return NCCLCommunicator(mpi_comm=boot), cfg
    boot.deterministic = cfg.allreduce == "deterministic"
    return boot, cfg


def _train_rank(args):
    """``tinyllm train`` as one rank of ``mpiexec -n N``: every rank trains, rank 0 prints and
    writes. An error that every rank knows of (rank 0's setup, a non-finite loss, Ctrl-C) ends
    each rank on its own, rank 0 printing it; the others exit 1 quietly. An error one rank
    alone hit is printed by that rank, naming it, and stops the whole job (MPI_Abort: the
    others may be waiting in a collective for it)."""
    comm, cfg = _world(args)
    with distributed.blas_threads():            # this rank's share of its machine
        try:
            return train(cfg, resume=args.resume, quiet=args.quiet or comm.rank != 0,
                         overwrite=args.overwrite, comm=comm)
        except (SystemExit, KeyboardInterrupt):
            raise
        except (distributed.PeerStopped, TrainError) as e:
            if comm.rank != 0 or isinstance(e, distributed.PeerStopped):
                raise SystemExit(1) from None
            raise
        except BaseException as e:
            if comm.rank == 0 and getattr(e, "relayed", False):
                raise                           # the others know: each exits on its own
            message = str(e) if str(e).startswith("rank ") else f"rank {comm.rank}: {e}"
            if args.debug or os.environ.get("TINYLLM_DEBUG", "") not in ("", "0"):
                import traceback
                traceback.print_exc()
            print(f"tinyllm train: error: {message}", file=sys.stderr, flush=True)
            comm.abort(1)
            os._exit(1)                         # MPI_Abort does not return; in case it does


def explain_backward(args):
    """``tinyllm explain-backward``: one forward of a tiny GPT (or of a trained run, on a batch
    of its corpus), then its backward pass step by step (``tinyllm.trace``)."""
    from tinyllm import explorer, trace
    from tinyllm.autograd import graph
    with (explorer.plant_bug(args.plant_bug) if args.plant_bug else contextlib.nullcontext()):
        return _explain_backward(args, trace, graph)


def _explain_backward(args, trace, graph):
    if args.html:
        folder = os.path.dirname(os.path.abspath(args.html))
        if not os.path.isdir(folder):
            raise ValueError(f"explain-backward: --html {args.html}: the folder {folder} does "
                             f"not exist")
        if args.steps or args.bisect:
            raise ValueError("explain-backward: --html runs the backward once for the page, "
                             "which shows each step and each node's check already; give "
                             "--steps or --bisect in a run of their own")
    if args.plant_bug and not (args.html or args.bisect):
        raise ValueError("explain-backward: --plant-bug shows where the finite-difference "
                         "check disagrees: give it with --html or --bisect")
    dtype = "float64" if args.bisect or args.html else "float32"
    if args.out_dir:
        cfg, tok, model, log = open_run(args.out_dir)
        model.to(np.dtype(dtype))
        text = read_text(run_corpus(cfg, log))
        data = np.array(tok.encode(text[:100_000]), dtype=np.int64)
        idx, targets = get_batch(data, args.batch_size, cfg.block_size,
                                 np.random.default_rng(args.seed))
        what = f"the run in {args.out_dir}"
    else:
        if args.n_embd % args.n_head:
            raise ValueError(f"explain-backward: --n-embd {args.n_embd} does not split into "
                             f"--n-head {args.n_head} heads")
        model, idx, targets, _ = trace.tiny_gpt_example(
            args.n_layer, args.n_head, args.n_embd, args.block_size, args.batch_size,
            args.seed, dtype=dtype)
        what = (f"a tiny GPT ({args.n_layer} layer, {args.n_head} heads, {args.n_embd} dims, "
                f"{model.num_parameters():,} parameters)")
    _, loss = model(idx, targets)
    print(f"backward pass of {what} on a batch of shape {tuple(idx.shape)}; "
          f"loss {float(loss.data):.4f}\n")
    if args.html:
        if args.dot:                                # drawn from the graph the page consumes
            print(f"graph written to {graph.render(graph.to_dot(loss, model=model), args.dot)}")
        path = trace.to_html(loss, model, args.html,
                             title=f"Backward of {what}" + (
                                 f", {args.plant_bug}'s backward planted wrong"
                                 if args.plant_bug else ""))
        print(f"wrote {path} ({path.stat().st_size:,} bytes): open it in a browser")
        return path
    if args.bisect:
        report = tl.bisect_backward(loss, model=model)
        print(report)
        return report
    if args.dot:
        path = graph.render(graph.to_dot(loss, model=model), args.dot)
        print(f"graph written to {path}\n")
    if args.steps:
        steps = []
        for step in trace.backward_steps(loss, model=model, ops=args.ops, modules=args.modules):
            print(step, end="\n\n")
            steps.append(step)
        return steps
    return trace.explain_backward(loss, model=model, ops=args.ops, modules=args.modules)


# what a user can cause with bad input or a bad file; anything else is a bug: its traceback
USER_ERRORS = (TrainError, RunDirError, ValueError, TypeError, LookupError, OSError, RuntimeError,
               MemoryError, UnicodeError, ImportError)


def run(argv=None):
    """Console-script entry point (``tinyllm ...``): 0 on success; 1 after an error, printed as
    ``tinyllm <command>: error: <message>`` without a traceback (``--debug`` or
    ``TINYLLM_DEBUG=1`` shows it); 2 for a bad command line (argparse's message); 130 after
    Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("TINYLLM_DEBUG", "") not in ("", "0")
    try:
        main(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        prog = " ".join(["tinyllm"] + [a for a in argv if not a.startswith("-")][:1])
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, MemoryError):
            message = f"out of memory ({e or 'MemoryError'}); try a smaller model or batch"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("tinyllm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run())
