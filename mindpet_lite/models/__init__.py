"""mindpet_lite.models"""
