"""seeds.py — write the seed corpora of the OIP and JSON fuzz targets (tests/fuzz/corpus/).

    python3 tests/fuzz/seeds.py

Each file is a fuzz input in its target's format (see the comment at the top of the target):
fuzz_oip takes 4 steering bytes then a request body, fuzz_oip_binary a recipe, fuzz_json one
steering byte then JSON text. The safetensors target is seeded by `make fuzz` from
tests/golden/*.safetensors and tests/data/*.safetensors instead.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tensor(name, datatype, shape, data=None, binary=None):
    t = {"name": name, "datatype": datatype, "shape": shape}
    if binary is not None:
        t["parameters"] = {"binary_data_size": binary}
    else:
        t["data"] = data
    return t


def oip(name, body, binary=b"", max_elements_byte=0xFF):
    """fuzz_oip input: JSON body, plus binary data (json_len = the JSON's length)."""
    text = json.dumps(body, separators=(",", ":")).encode()
    if binary:
        v = len(text) + 2  # json_len = v mod (len + 4) - 2
        head = bytes([0x00]) + struct.pack("<H", v) + bytes([max_elements_byte])
    else:
        head = bytes([0x01, 0, 0, max_elements_byte])
    write("oip", name, head + text + binary)


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def oip_seeds():
    x = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.75, 3.0]]
    flat = [v for row in x for v in row]
    oip("infer_nested", {"id": "r1", "inputs": [tensor("input", "FP32", [2, 4], x)]})
    oip("infer_flat", {"inputs": [tensor("input", "FP32", [2, 4], flat)],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}]})
    oip("infer_fp64_ints", {"inputs": [tensor("input", "FP64", [1, 3], [1, 2.5, -3e-3])],
                            "parameters": {"binary_data_output": True}})
    oip("feedback_grad", {"id": "fb", "inputs": [tensor("input", "FP32", [2, 4], x),
                                                 tensor("grad_output", "FP32", [2, 2], [0.1, -0.2, 0.3, 0.4])]})
    oip("feedback_target", {"inputs": [tensor("input", "FP32", [1, 4], [x[0]]),
                                       tensor("target", "FP32", [1, 2], [[1.0, 0.0]])]})
    oip("feedback_label64", {"inputs": [tensor("input", "FP32", [2, 4], x),
                                        tensor("label", "INT64", [2], [1, 0])]})
    oip("feedback_label32", {"inputs": [tensor("input", "FP32", [2, 4], x),
                                        tensor("label", "INT32", [2], [3, -1])]})
    oip("infer_binary", {"id": "b", "inputs": [tensor("input", "FP32", [2, 4], binary=32)],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}}]},
        binary=f32(flat))
    oip("feedback_binary", {"inputs": [tensor("input", "FP32", [2, 4], binary=32),
                                       tensor("label", "INT32", [2], binary=8)]},
        binary=f32(flat) + struct.pack("<2i", 1, 0))
    oip("feedback_mixed", {"inputs": [tensor("input", "FP64", [1, 2], binary=16),
                                      tensor("target", "FP32", [1, 2], [0.5, 0.5])]},
        binary=struct.pack("<2d", 1.0, -2.0))
    oip("uints", {"inputs": [tensor("a", "UINT8", [3], [0, 255, 7]), tensor("b", "INT8", [2], [-128, 127]),
                             tensor("c", "UINT64", [1], [9223372036854775807])]})
    oip("empty_rows", {"inputs": [tensor("input", "FP32", [0, 4], [])]})
    oip("feedback_by_id_rows", {"id": "0123456789abcdef-7", "inputs": [tensor("label", "INT64", [2], [1, 0])],
                                "parameters": {"rows": [3, 0]}})
    oip("feedback_by_id_bad_rows", {"id": "q", "inputs": [tensor("target", "FP32", [1, 2], [[1.0, 0.0]])],
                                    "parameters": {"rows": [1, -2, 1.5, "x", [0]]}})


def binary_recipe(name, inputs, data, json_mode=2, mode_extra=0):
    """fuzz_oip_binary input. inputs: (dtype index, shape list, size mode); data: bytes."""
    rec = bytes([(len(inputs) - 1) | mode_extra])
    for dt, shape, sm in inputs:
        rec += bytes([dt | (len(shape) - 1) << 4 | sm << 6]) + bytes(shape)
    rec += bytes([json_mode])
    write("oip_binary", name, rec + data)


def binary_seeds():
    binary_recipe("fp32_2x3", [(0, [2, 3], 0)], f32([1, 2, 3, 4, 5, 6]))
    binary_recipe("fp32_and_int32", [(0, [2, 2], 0), (4, [2], 0)], f32([1, 2, 3, 4]) + struct.pack("<2i", 1, -1))
    binary_recipe("fp64_uint8_int16", [(1, [1, 2], 0), (6, [3], 0), (3, [2], 0)],
                  struct.pack("<2d", 0.5, -8.0) + bytes([1, 2, 255]) + struct.pack("<2h", -5, 300))
    binary_recipe("int64_uint64", [(5, [2], 0), (9, [1], 0)], struct.pack("<2qQ", -1, 2, 2 ** 63 - 1))
    binary_recipe("size_off_by_one", [(0, [1, 2], 1)], f32([1, 2]))
    binary_recipe("no_header", [(0, [1, 1], 0)], f32([1]), json_mode=1)


def json_seeds():
    docs = [b'{"a":[1,2.5,-3e10,true,false,null],"b":{"c":"\\u00e9\\ud83d\\ude00\\n"}}',
            b'[[[[1]]],[],{}," x ",-0,-0.0,1e-45,3.4028235e38,18446744073709551616]',
            b'"\\u0000"', b'  12345678901234567890123  ', b'{"k":1,"k":2}', b'[1,]', b'{"a" 1}',
            '"é漢字"'.encode(), b'[0.1,1e400,-1E-400,123456789012,9007199254740993]']
    for k, d in enumerate(docs):
        write("json", "doc%d" % k, bytes([0x20]) + d)


def admin_seeds():
    """fuzz_admin input: method byte (GET HEAD POST PUT DELETE OPTIONS), URL, NUL, header."""
    cases = [(0, "/v2/health/ready", ""), (2, "/v2/models/demo/infer", "Bearer s3cret-token"),
             (2, "/v2/models/m-1.a_b/versions/3/feedback", "bearer   feedback-token"),
             (2, "/admin/models/demo/restore", "Bearer wrong"), (3, "/admin/models/new", "Basic abc"),
             (4, "/admin/models/demo", "Bearer "), (0, "/admin/models/demo/snapshots?x=1", ""),
             (0, "/v2/models/../admin/models", ""), (0, "/v2/models/.hidden", ""),
             (5, "/metrics", ""), (0, "/v2/models/" + "a" * 130, "")]
    for k, (m, url, header) in enumerate(cases):
        write("admin", "req%d" % k, bytes([m]) + url.encode() + b"\0" + header.encode())
    write("admin", "custom_method", bytes([0x80]) + b"PATCH\0/admin/models/x\0Bearer x")


if __name__ == "__main__":
    oip_seeds()
    binary_seeds()
    json_seeds()
    admin_seeds()
