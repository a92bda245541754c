"""llava"""
