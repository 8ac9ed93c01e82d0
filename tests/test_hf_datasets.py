"""Hugging Face datasets as teams keep them (save_to_disk, parquet, imagefolder, Hub ids) open as pilot datasets:
right items, right pictures, split selection, clear errors, and images read only when loaded."""

import io
import json
import pickle
import socket

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pilot.data import open_dataset
from pilot.data.hf import ArrowImage, ParquetImage
from pilot.data.images import ImageError, load_image
from pilot.data.manifest import ManifestError

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_MEASURING_POOLS = []  # a pool must outlive every buffer it allocated (caches keep some): never freed


@pytest.fixture(autouse=True)
def no_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def colour(i):
    return (10 * i % 256, 255 - 7 * i % 256, 3 * i % 256)


def png(rgb, size=(6, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "PNG")
    return buf.getvalue()


def noise_png(seed, side=300):
    """An incompressible PNG (about side * side * 3 bytes), to make reading it measurable."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def pixel(item):
    return load_image(item.image).getpixel((0, 0))


def hf_dataset(n, **extra):
    data = {"image": [png(colour(i)) for i in range(n)], "question": [f"What is {i}?" for i in range(n)], **extra}
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def write_parquet(path, n, *, start=0, row_group_size=2, images=None, **extra):
    """A parquet file as the Hub keeps them, written with pyarrow: Image structs {bytes, path}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images if images is not None else [png(colour(start + i)) for i in range(n)]
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": f"{start + i}.png"} for i, b in enumerate(images)], IMAGE_STRUCT),
        "question": [f"q{start + i}" for i in range(n)],
        **extra,
    })
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def message(source, *fragments, **kwargs):
    with pytest.raises(ManifestError) as info:
        open_dataset(source, **kwargs)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


# -- save_to_disk -----------------------------------------------------------------------------------


def test_save_to_disk_dataset(tmp_path):
    answers = [["cat", "a cat"], ["dog"], ["bird", "a bird", "sparrow"]]
    hf_dataset(3, answers=answers, id=["a", "b", "c"]).save_to_disk(tmp_path / "saved")
    ds = open_dataset(tmp_path / "saved", task="text")
    assert ds.kind == "arrow" and ds.name == "saved" and len(ds) == 3
    assert [i.id for i in ds.items] == ["a", "b", "c"]
    assert [i.question for i in ds.items] == ["What is 0?", "What is 1?", "What is 2?"]
    assert [i.references for i in ds.items] == [tuple(a) for a in answers]  # 'answers' found: no 'answer' column
    assert ds.tasks == ("text",) and ds.referenced == 3 and ds.labelled == 0
    assert all(isinstance(i.image, ArrowImage) for i in ds.items)
    assert [pixel(i) for i in ds.items] == [colour(i) for i in range(3)]
    assert "saved row 2 column image" in ds.items[2].image.name


def test_save_to_disk_dataset_dict_needs_a_split(tmp_path):
    train = hf_dataset(4, answer=["w", "x", "y", "z"])
    test = datasets.Dataset.from_dict({"image": [png((1, 2, 3)), png((4, 5, 6))], "question": ["t0", "t1"],
                                       "answer": ["u", "v"]}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")
    message(tmp_path / "dd", "several splits", "train, test", "--split")
    message(tmp_path / "dd", "no split 'dev'", "train, test", split="dev")
    ds = open_dataset(tmp_path / "dd", split="test", task="text")
    assert [i.id for i in ds.items] == ["0", "1"]  # no id column: the row index in the split
    assert [i.question for i in ds.items] == ["t0", "t1"]
    assert [i.references for i in ds.items] == [("u",), ("v",)]
    assert [pixel(i) for i in ds.items] == [(1, 2, 3), (4, 5, 6)]
    assert len(open_dataset(tmp_path / "dd", split="train", task="text")) == 4
    assert open_dataset(tmp_path / "dd", split="train", task="text").sha256 \
        != open_dataset(tmp_path / "dd", split="test", task="text").sha256


def test_class_label_column_gives_names_and_label_set(tmp_path):
    ds = hf_dataset(3, label=[1, 0, -1]).cast_column("label", datasets.ClassLabel(names=["ok", "scratch"]))
    ds.save_to_disk(tmp_path / "cls")
    ds.to_parquet(tmp_path / "cls.parquet")
    for source in (tmp_path / "cls", tmp_path / "cls.parquet"):
        opened = open_dataset(source)
        assert opened.labels == ("ok", "scratch")  # the feature's order, not sorted found labels
        assert [i.label for i in opened.items] == ["scratch", "ok", ""]  # -1: unlabelled
        assert opened.tasks == ("label",) and opened.referenced == 0


# -- parquet ----------------------------------------------------------------------------------------


def test_to_parquet_file(tmp_path):
    hf_dataset(3, answer=['{"n": 0}', '{"n": 1, "a": "é"}', None]).to_parquet(tmp_path / "one.parquet")
    ds = open_dataset(tmp_path / "one.parquet", task="json")
    assert ds.kind == "parquet" and ds.name == "one"
    assert [i.id for i in ds.items] == ["0", "1", "2"]
    assert [i.line for i in ds.items] == [1, 2, 3]
    assert [i.references for i in ds.items] == [('{"n": 0}',), ('{"a": "é", "n": 1}',), ()]
    assert ds.referenced == 2
    assert all(isinstance(i.image, ParquetImage) for i in ds.items)
    assert [pixel(i) for i in ds.items] == [colour(i) for i in range(3)]


def test_parquet_folder_with_splits_and_small_row_groups(tmp_path):
    data = tmp_path / "hub" / "data"
    write_parquet(data / "train-00000-of-00002.parquet", 5, start=0, answer=[f"a{i}" for i in range(5)])
    write_parquet(data / "train-00001-of-00002.parquet", 3, start=5, answer=[f"a{i}" for i in range(5, 8)])
    write_parquet(data / "test-00000-of-00001.parquet", 2, start=100, answer=["t", "u"])
    (tmp_path / "hub" / "README.md").write_text("# a dataset card\n")
    message(tmp_path / "hub", "several splits", "test, train", "--split")
    message(tmp_path / "hub", "no parquet file of split 'dev'", "test, train", split="dev")

    train = open_dataset(tmp_path / "hub", split="train", task="text")
    assert len(train) == 8
    assert [i.id for i in train.items] == [str(i) for i in range(8)]  # row index across the split's files
    assert [i.question for i in train.items] == [f"q{i}" for i in range(8)]
    assert [i.references for i in train.items] == [(f"a{i}",) for i in range(8)]
    last = train.items[7].image  # the second file's third row: its second row group
    assert (last.row_group, last.index) == (1, 0)
    assert "train-00001-of-00002.parquet row 2 column image" in last.name
    assert [pixel(i) for i in train.items] == [colour(i) for i in range(8)]

    test = open_dataset(tmp_path / "hub", split="test", task="text")
    assert [i.question for i in test.items] == ["q100", "q101"]
    assert [pixel(i) for i in test.items] == [colour(100), colour(101)]


def test_parquet_rows_in_later_row_groups(tmp_path):
    path = write_parquet(tmp_path / "rg.parquet", 7, row_group_size=3)
    ds = open_dataset(path, prompt_template="Describe.")
    assert [(i.image.row_group, i.image.index) for i in ds.items] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                                         (1, 2), (2, 0)]
    assert [pixel(i) for i in reversed(ds.items)] == [colour(i) for i in reversed(range(7))]
    assert ds.items[0].question == "q0"


def test_parquet_items_do_not_read_the_image_column(tmp_path):
    """Building the items reads the small columns only; each image's bytes are read when it is loaded."""
    images = [noise_png(seed) for seed in range(16)]
    total = sum(map(len, images))
    path = write_parquet(tmp_path / "big.parquet", 16, images=images, row_group_size=2)
    default_pool = pa.default_memory_pool()

    def peak_arrow_memory(action):
        pool = pa.proxy_memory_pool(default_pool)  # its own counters: only what `action` allocates
        _MEASURING_POOLS.append(pool)
        pa.set_memory_pool(pool)
        try:
            result = action()
        finally:
            pa.set_memory_pool(default_pool)
        return result, pool.max_memory()

    ds, peak = peak_arrow_memory(lambda: open_dataset(path, prompt_template="Describe."))
    assert len(ds) == 16
    assert peak < total / 20, (peak, total)
    assert len(pickle.dumps(ds.items)) < total / 20  # the items hold no image bytes either
    # The measure can fail: reading the file whole allocates the image column.
    _, whole = peak_arrow_memory(lambda: pq.read_table(path))
    assert whole > total
    # Loading one image reads its row group's image cells (2 of 16 images), not the file.
    img, one = peak_arrow_memory(lambda: load_image(ds.items[7].image))
    assert one < total / 3, (one, total)
    assert img.size == (300, 300)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(images[7])).convert("RGB")))


def test_parquet_image_as_path_or_plain_bytes(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "p.png").write_bytes(png((9, 8, 7)))
    table = pa.table({
        "image": pa.array([{"bytes": None, "path": "pics/p.png"}, {"bytes": png((1, 1, 1)), "path": None}],
                          IMAGE_STRUCT),
        "question": ["a", "b"],
    })
    pq.write_table(table, tmp_path / "mixed.parquet")
    ds = open_dataset(tmp_path / "mixed.parquet")
    assert [pixel(i) for i in ds.items] == [(9, 8, 7), (1, 1, 1)]  # a struct without bytes reads its path

    pq.write_table(pa.table({"picture": pa.array([png((5, 5, 5))], pa.binary()), "question": ["q"]}),
                   tmp_path / "raw.parquet")
    assert pixel(open_dataset(tmp_path / "raw.parquet", image_column="picture").items[0]) == (5, 5, 5)

    pq.write_table(pa.table({"image": ["pics/p.png"], "question": ["q"]}), tmp_path / "paths.parquet")
    item = open_dataset(tmp_path / "paths.parquet").items[0]
    assert item.image == tmp_path / "pics" / "p.png" and pixel(item) == (9, 8, 7)


def test_broken_embedded_image_is_that_items_error(tmp_path):
    images = [png((1, 2, 3)), b"not an image", png((1, 2, 3))[:30]]
    path = write_parquet(tmp_path / "bad.parquet", 3, images=images)
    ds = open_dataset(path, prompt_template="Describe.")
    assert pixel(ds.items[0]) == (1, 2, 3)
    for item in ds.items[1:]:
        with pytest.raises(ImageError, match=r"bad\.parquet row \d column image"):
            load_image(item.image)


def test_answer_column_shapes(tmp_path):
    table = pa.table({
        "image": pa.array([{"bytes": png((0, 0, 0)), "path": None}] * 3, IMAGE_STRUCT),
        "query": ["q0", "q1", "q2"],
        "gold": [["x", "y"], ["z"], None],
        "spec": [{"b": 1, "a": "α"}, None, {"b": 2, "a": "β"}],
        "task": ["", "label", None],
    })
    pq.write_table(table, tmp_path / "shapes.parquet")
    ds = open_dataset(tmp_path / "shapes.parquet", question_column="query", answer_column="gold", task="text")
    assert [i.task for i in ds.items] == ["text", "label", "text"]  # the row's task, else the default
    assert [i.references for i in ds.items] == [("x", "y"), (), ()]
    assert ds.tasks == ("label", "text") and ds.referenced == 1
    ds = open_dataset(tmp_path / "shapes.parquet", question_column="query", answer_column="spec", task="json")
    assert [i.references for i in ds.items] == [('{"a": "α", "b": 1}',), (), ('{"a": "β", "b": 2}',)]
    message(tmp_path / "shapes.parquet", "shapes.parquet row 0", "'gold'", "exactly one reference",
            question_column="query", answer_column="gold", task="json")


def test_sha256_follows_the_data_not_the_images(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", 4, answer=["a", "b", "c", "d"])
    first = open_dataset(path, task="text").sha256
    assert open_dataset(path, task="text").sha256 == first
    assert open_dataset(path, task="text", question_column="answer").sha256 != first  # other columns read
    write_parquet(tmp_path / "d.parquet", 4, answer=["a", "b", "c", "e"])
    assert open_dataset(path, task="text").sha256 != first


# -- imagefolder ------------------------------------------------------------------------------------


def test_imagefolder_with_metadata_jsonl(tmp_path):
    root = tmp_path / "folder"
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        (root / "imgs" / f"{i}.png").write_bytes(png(colour(i)))
    rows = [
        {"file_name": "imgs/0.png", "question": "Colour?", "answers": ["red", "dark red"]},
        {"file_name": "imgs/1.png", "question": "Spec?", "answer": {"k": 1}, "task": "json"},
        {"file_name": "imgs/2.png", "question": "Colour?"},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = open_dataset(root, task="text")
    assert ds.kind == "imagefolder" and len(ds) == 3
    assert [i.id for i in ds.items] == ["imgs/0.png", "imgs/1.png", "imgs/2.png"]  # as manifests: the image path
    assert [i.task for i in ds.items] == ["text", "json", "text"]
    assert [i.references for i in ds.items] == [("red", "dark red"), ('{"k": 1}',), ()]
    assert ds.items[0].image == (root / "imgs" / "0.png").resolve()
    assert [pixel(i) for i in ds.items] == [colour(i) for i in range(3)]


def test_imagefolder_csv_split_folders_and_columns(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        (tmp_path / "f" / split).mkdir(parents=True)
        lines = ["file_name,prompt,label"]
        for i in range(n):
            (tmp_path / "f" / split / f"{i}.png").write_bytes(png(colour(i)))
            lines.append(f"{i}.png,Which part?,{'ok' if i else 'bad'}")
        (tmp_path / "f" / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    message(tmp_path / "f", "several splits", "test, train")
    # Label rows with a label column may use the default question (it lists the labels); other rows may not.
    message(tmp_path / "f", "no column 'question' (--question-column)", "file_name, prompt, label", split="train",
            task="text")
    assert open_dataset(tmp_path / "f", split="test").items[0].question.endswith("Answer with one of: bad.")
    ds = open_dataset(tmp_path / "f", split="train", question_column="prompt")
    assert [(i.id, i.question, i.label) for i in ds.items] == [("0.png", "Which part?", "bad"),
                                                               ("1.png", "Which part?", "ok")]
    assert ds.labels == ("bad", "ok")
    assert [pixel(i) for i in ds.items] == [colour(0), colour(1)]


# -- errors -----------------------------------------------------------------------------------------


def test_missing_columns_are_named_with_the_columns_there_are(tmp_path):
    pq.write_table(pa.table({"image": pa.array([{"bytes": png((0, 0, 0)), "path": None}], IMAGE_STRUCT),
                             "query": ["What?"], "answers": [["x"]]}), tmp_path / "data.parquet")
    source = tmp_path / "data.parquet"
    text = message(source, "data.parquet", "no column 'question' (--question-column)",
                   "columns: image, query, answers")
    assert "--prompt-template" in text
    message(source, "no column 'picture' (--image-column)", "columns: image, query, answers",
            image_column="picture")
    message(source, "no column 'cls' (--label-column)", label_column="cls", question_column="query", task="text")
    message(source, "no column 'gold' (--answer-column)", answer_column="gold", question_column="query")
    ds = open_dataset(source, question_column="query", task="text")
    assert ds.items[0].question == "What?" and ds.items[0].references == ("x",)
    assert open_dataset(source, prompt_template="Describe.", task="text").items[0].question == "Describe."


def test_image_column_of_the_wrong_type(tmp_path):
    pq.write_table(pa.table({"image": [1, 2], "question": ["a", "b"]}), tmp_path / "n.parquet")
    message(tmp_path / "n.parquet", "n.parquet", "'image'", "not images")


def test_hub_id_offline_fails_clearly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # both read the variables at import
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    message("acme/parts-inspection", "acme/parts-inspection", "could not reach", "local folder", "save_to_disk",
            "HF_HUB_OFFLINE", split="train")


def test_hub_id_fails_fast_when_the_hub_cannot_be_reached(monkeypatch):
    """Without HF_HUB_OFFLINE an unreachable Hub took ~23 s of datasets' retries; one probe now fails in seconds."""
    import time

    import huggingface_hub.constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nothing listens on: connections are refused at once
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("probed first, never retried"))
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.perf_counter()
    message("acme/parts-inspection", "could not reach", f"127.0.0.1:{port}", "HF_HUB_OFFLINE", "save_to_disk")
    assert time.perf_counter() - started < 5


def test_hub_stream_when_reachable(monkeypatch):
    """Where the Hub answers, the stream's rows become items (load_dataset stands in for it here)."""
    stream = hf_dataset(3, answer=["a", "b", "c"]).to_iterable_dataset()
    calls = []

    def fake_load_dataset(path, split=None, streaming=False):
        calls.append((path, split, streaming))
        return datasets.IterableDatasetDict({"validation": stream}) if split is None else stream

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("pilot.data.readers.hub.probe_hub", lambda dataset_id: None)  # the Hub "answers"
    ds = open_dataset("acme/parts", task="text")
    assert calls == [("acme/parts", None, True)]
    assert ds.kind == "hub" and ds.name == "acme/parts" and len(ds) == 3
    assert [i.references for i in ds.items] == [("a",), ("b",), ("c",)]
    assert [pixel(i) for i in ds.items] == [colour(i) for i in range(3)]
    assert ds.sha256 == open_dataset("acme/parts", task="text", split="validation").sha256


def test_missing_local_paths_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("not a hub id"))
    message(tmp_path / "nope", "not found")
    message("data/train.parquet", "not found")
    message(str(tmp_path / "x.csv"), "not found")


def test_not_a_dataset_folder_or_file(tmp_path):
    (tmp_path / "empty").mkdir()
    message(tmp_path / "empty", "not a dataset folder", "metadata.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    message(tmp_path / "x.txt", "x.txt", ".parquet")
    (tmp_path / "junk.parquet").write_bytes(b"no parquet here")
    message(tmp_path / "junk.parquet", "junk.parquet", "not a readable parquet file")


def test_manifests_pass_through(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "question": "Colour?", "answers": ["red"]}) + "\n")
    ds = open_dataset(manifest, task="text")
    assert ds.kind == "jsonl" and ds.items[0].references == ("red",)
    message(manifest, "--question-column 'query'", "fixed", question_column="query")
    message(manifest, "no splits", split="train")


def test_a_name_lookup_that_hangs_fails_within_the_probe_timeout(monkeypatch):
    import threading
    import time

    import huggingface_hub.constants

    from pilot.data.readers.hub import probe_hub

    release = threading.Event()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(30) and [])  # a resolver that hangs
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.perf_counter()
    with pytest.raises(ManifestError, match="no answer within 0.5 s"):
        probe_hub("acme/parts", timeout_s=0.5)
    assert time.perf_counter() - started < 2
    release.set()


# -- the document-QA defects a new user met (issue 24) -----------------------------------------------------


def test_a_split_a_saved_dataset_does_not_have_is_refused(tmp_path):
    hf_dataset(3).save_to_disk(tmp_path / "plain")  # Dataset.from_dict: saved without a split name
    message(tmp_path / "plain", "no split 'test'", "without a split name", "drop --split", split="test")
    assert len(open_dataset(tmp_path / "plain", prompt_template="Q?")) == 3
    named = datasets.Dataset.from_dict({"image": [png((1, 2, 3))], "question": ["q"]},
                                       split=datasets.Split.TRAIN).cast_column("image", datasets.Image())
    named.save_to_disk(tmp_path / "named")
    message(tmp_path / "named", "no split 'test'", "'train' split", split="test")
    assert len(open_dataset(tmp_path / "named", split="train")) == 1


def docvqa_parquet(path, n, *, corrupt=()):
    """The Hub's DocVQA layout: questionId, question, image struct, answers list (``corrupt``: rows whose image
    bytes Pillow cannot read)."""
    images = [b"not an image" if i in corrupt else png(colour(i)) for i in range(n)]
    pq.write_table(pa.table({
        "questionId": [1000 + i for i in range(n)],
        "question": [f"q{i}" for i in range(n)],
        "image": pa.array([{"bytes": b, "path": None} for b in images], IMAGE_STRUCT),
        "answers": [[f"a{i}"] for i in range(n)],
    }), path, row_group_size=8)
    return path


def test_docvqa_layout_needs_task_text_and_reads_its_question_ids(tmp_path):
    path = docvqa_parquet(tmp_path / "docvqa.parquet", 4)
    message(path, "column 'answers' holds reference answers", "--task text", "--task label")
    ds = open_dataset(path, task="text", id_column="questionId")
    assert [i.id for i in ds.items] == ["1000", "1001", "1002", "1003"]
    assert ds.items[0].references == ("a0",)
    assert [i.id for i in open_dataset(path, task="text").items] == ["0", "1", "2", "3"]
    message(path, "no column 'qid' (--id-column)", "questionId", task="text", id_column="qid")
    assert open_dataset(path, task="label", prompt_template="Q?").referenced == 0  # ignored, as asked
    assert open_dataset(path, task="text", no_labels=True).referenced == 0  # label-free: no scoring


def test_a_fixed_parquet_file_has_another_digest(tmp_path):
    path = docvqa_parquet(tmp_path / "docvqa.parquet", 40, corrupt=range(20, 40))
    broken = open_dataset(path, task="text").sha256
    docvqa_parquet(path, 40)
    assert open_dataset(path, task="text").sha256 != broken
