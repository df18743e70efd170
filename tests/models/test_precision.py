from medfake.models.precision import CPU_BFLOAT16_FASTER, choose


def test_auto_follows_the_device_and_the_measured_table():
    assert choose("auto", "auto", "Xception", "gpu") == ("float16", True)
    assert choose("auto", "auto", "MobileNetV3Large", "cpu") == ("float32", False)
    for name in CPU_BFLOAT16_FASTER:
        assert choose("auto", "auto", name, "cpu") == ("bfloat16", False)


def test_explicit_choices_are_kept():
    assert choose("float32", "true", "Xception", "gpu") == ("float32", True)
    assert choose("bfloat16", "false", "MobileNetV3Large", "cpu") == ("bfloat16", False)
